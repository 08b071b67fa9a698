"""One run in one container: its sandbox, its container, its life and its end."""
