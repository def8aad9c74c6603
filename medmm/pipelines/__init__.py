"""The commands (``python -m medmm.pipelines.<name>``, or ``medmm <name>``).

Importing the package sets up the console they print to (:func:`medmm.console.configure_console`)
before any command module loads its workflow: some dependencies warn while they are imported.
"""

from medmm.console import configure_console

configure_console()
