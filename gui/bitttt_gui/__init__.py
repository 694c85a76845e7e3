"""bitttt_gui: the Tk launcher for bitttt (train, watch, stop, chat).

Installed as the package ``bitttt_gui``; started with ``bitttt-gui``. Neither this
package nor any of its modules imports torch or ``bitttt``: the launcher talks to
``python -m bitttt`` child processes through their event stream (DESIGN §6).
Only ``app`` and ``tabs`` import tkinter; every other module is tested headless.
"""

__all__: list[str] = []
