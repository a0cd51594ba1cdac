"""The one Beat service: sends the periodic tasks by name, through the contracts."""
