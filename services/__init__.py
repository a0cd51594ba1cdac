"""One folder per deployable worker, and Beat."""
