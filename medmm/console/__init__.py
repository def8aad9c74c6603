"""What a command shows on the terminal: progress bars for long steps (rich), one log
handler with the dependencies' idle warnings filtered, and the headline a run ends with.
A floor-0 package beside ``config``: every floor may use it, it imports no other part of medmm."""

from medmm.console.headline import Number, headline, run_page
from medmm.console.logs import adopt_library_loggers, configure_console
from medmm.console.progress import progress, progress_enabled

__all__ = ["Number", "adopt_library_loggers", "configure_console", "headline", "progress", "progress_enabled",
           "run_page"]
