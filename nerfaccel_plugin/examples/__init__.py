"""Runnable examples (``python -m nerfaccel_plugin.examples.<name>``)."""
