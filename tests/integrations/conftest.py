"""Integration tests: helper modules here are imported by the tests, not collected."""

collect_ignore = ["lightning_module.py", "_models.py"]
