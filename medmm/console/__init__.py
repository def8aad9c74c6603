"""What a command shows on the terminal: progress bars for long steps (rich), and nothing
else of its own. A floor-0 package beside ``config``: every floor may use it, it imports no
other part of medmm."""

from medmm.console.progress import progress, progress_enabled

__all__ = ["progress", "progress_enabled"]
