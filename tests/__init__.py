"""Integration, end-to-end and reliability tests, and the stand-in neighbours they run against."""
