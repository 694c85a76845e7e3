"""The launcher's look: the Sun Valley ttk theme (``sv-ttk``), light or dark as the system is, with
"clam" as the fallback; and the few colours the tabs draw themselves, per mode.

``BITTTT_GUI_THEME`` (or ``bitttt-gui --theme``) overrides the choice: ``auto`` (the default),
``light``, ``dark`` or ``classic`` (the toolkit's own theme: clam, or vista on Windows).
Where the system's mode cannot be told (Linux: Tk has no way to ask), ``auto`` is light.
"""

from __future__ import annotations

import sys
import tkinter as tk
from dataclasses import dataclass
from tkinter import font as tkfont
from tkinter import ttk
from typing import Callable

THEME_ENV = "BITTTT_GUI_THEME"
CHOICES = ("auto", "light", "dark", "classic")


@dataclass(frozen=True)
class Palette:
    dark: bool
    hint: str           # secondary text
    error: str
    warn: str
    good: str
    bad_field: str      # the background of a field with a bad value (themes that draw fields with colours)
    bar: str            # progress bars
    user: str           # the chat transcript: your turns
    bot: str            # the model's text
    bot_label: str
    info: str
    raw: str            # the Logs tab: lines that are not events
    stderr: str
    match: str          # a find match's background


LIGHT = Palette(dark=False, hint="#5f6368", error="#b00020", warn="#9a6700", good="#1a7f37", bad_field="#ffe3e3",
                bar="#3a7bd5", user="#0b5cad", bot="#1f1f1f", bot_label="#2e7d32", info="#6b6b6b",
                raw="#444444", stderr="#8a3b00", match="#fff3a3")
DARK = Palette(dark=True, hint="#a8acb1", error="#ff7b72", warn="#e3b341", good="#56d364", bad_field="#5a1e1e",
               bar="#57a0ff", user="#79b8ff", bot="#e6e6e6", bot_label="#7ee787", info="#a0a0a0",
               raw="#bdbdbd", stderr="#ffa657", match="#6b5b00")


def wanted(setting: str | None, system_dark: Callable[[], bool | None]) -> str:
    """"light", "dark" or "classic" for a setting (None or "" = auto); an unknown word is auto."""
    setting = (setting or "auto").strip().lower()
    if setting in ("light", "dark", "classic"):
        return setting
    return "dark" if system_dark() else "light"


def system_dark(root: tk.Misc) -> bool | None:
    """Whether the desktop is in dark mode, where Tk or the OS can tell; None where they cannot."""
    if sys.platform == "darwin":
        try:
            return bool(int(root.tk.call("::tk::unsupported::MacWindowStyle", "isdark", root._w)))
        except (tk.TclError, ValueError):
            return None
    if sys.platform == "win32":
        try:
            import winreg

            key = winreg.OpenKey(winreg.HKEY_CURRENT_USER,
                                 r"Software\Microsoft\Windows\CurrentVersion\Themes\Personalize")
            return winreg.QueryValueEx(key, "AppsUseLightTheme")[0] == 0
        except OSError:
            return None
    return None


SUN_VALLEY_FONTS = """
if {[info procs _bitttt_sv_colors] eq ""} {
    rename configure_colors _bitttt_sv_colors
    proc configure_colors {} {
        _bitttt_sv_colors
        ttk::style configure . -font TkDefaultFont
    }
}
"""


def _sun_valley(root: tk.Tk, mode: str) -> bool:
    """Load sv-ttk's light or dark theme; False (and nothing changed) if it is missing or fails."""
    try:
        import sv_ttk
    except ImportError:
        return False
    try:
        sv_ttk.set_theme(mode, root)
    except (tk.TclError, RuntimeError, TypeError):
        return False
    # Sun Valley asks for Segoe UI, which Linux lacks (Tk then picks any font): use Tk's named fonts,
    # which the layout measures with and the platform sets well. Its handler of <<ThemeChanged>> (sent
    # after every style change) sets the default font again: it is wrapped to set ours after it.
    root.tk.eval(SUN_VALLEY_FONTS)
    root.tk.call("configure_colors")
    style = ttk.Style(root)
    for name in ("TLabelframe.Label", "Heading", "Treeview"):
        style.configure(name, font="TkDefaultFont")
    style.configure("Treeview", rowheight=tkfont.nametofont("TkDefaultFont").metrics("linespace") + 6)
    # Its fields are 30 px tall, 7 more than clam's: the Train form's eight-row column then
    # overflowed a laptop screen. 27 px still frames the text.
    for name in ("TEntry", "TCombobox", "TSpinbox"):
        style.configure(name, padding=(6, 0, 4, 0))
    style.configure("TCheckbutton", padding=(2, 0))
    return True


def apply(root: tk.Tk, setting: str | None = None, pad: int = 6) -> tuple[str, Palette]:
    """Set the window's theme and the launcher's own styles; (the ttk theme in use, its palette)."""
    mode = wanted(setting, lambda: system_dark(root))
    style = ttk.Style(root)
    if mode == "classic" or not _sun_valley(root, mode):
        if sys.platform == "win32":
            style.theme_use("vista")
        elif sys.platform != "darwin" and "clam" in style.theme_names():
            style.theme_use("clam")
        mode = "light"
    p = DARK if mode == "dark" else LIGHT
    base = tkfont.nametofont("TkDefaultFont")
    family, size = base.cget("family"), base.cget("size")
    style.configure("Hint.TLabel", foreground=p.hint)
    style.configure("Value.TLabel", font=(family, size, "bold"))
    style.configure("Error.TLabel", foreground=p.error)
    style.configure("Warn.TLabel", foreground=p.warn)
    style.configure("Good.TLabel", foreground=p.good)
    # Sun Valley draws fields from images (no field colour): the text turns red there as well.
    style.configure("Bad.TEntry", fieldbackground=p.bad_field, foreground=p.error)
    style.configure("Bad.TCombobox", fieldbackground=p.bad_field, foreground=p.error)
    style.configure("Accent.TButton", font=(family, size, "bold"))
    # clam's tabs are tight; Sun Valley's tab images carry 16 px a side already (seven tabs must fit 900 px).
    style.configure("TNotebook.Tab", padding=(12, 4) if p is LIGHT and not style.theme_use().startswith("sun") else 0)
    style.configure("Status.TLabel", padding=(pad, 2))
    # clam draws the bar in the window's own grey: a finished run's full bar looked empty.
    style.configure("Horizontal.TProgressbar", background=p.bar, lightcolor=p.bar, darkcolor=p.bar)
    return style.theme_use(), p
