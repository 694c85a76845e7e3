"""The launcher's look: Sun Valley (sv-ttk) light or dark as the system says, an override, and clam without it."""

import sys
from tkinter import ttk

import pytest

from bitttt_gui import theme

from test_gui_app import make_app, settle  # noqa: F401  (make_app is a fixture)


def test_auto_follows_the_system_where_it_can_tell():
    assert theme.wanted(None, lambda: True) == "dark"
    assert theme.wanted("auto", lambda: False) == "light"
    assert theme.wanted("", lambda: None) == "light"          # Linux: Tk cannot tell
    assert theme.wanted(" Dark ", lambda: False) == "dark"      # an override wins
    assert theme.wanted("light", lambda: True) == "light"
    assert theme.wanted("classic", lambda: True) == "classic"
    assert theme.wanted("purple", lambda: True) == "dark"       # an unknown word is auto


def test_the_two_palettes_name_the_same_colours():
    assert set(vars(theme.LIGHT)) == set(vars(theme.DARK))
    assert theme.LIGHT.bot != theme.DARK.bot and not theme.LIGHT.dark and theme.DARK.dark


@pytest.mark.gui
def test_sun_valley_light_by_default_dark_on_request(make_app, monkeypatch):
    pytest.importorskip("sv_ttk")
    app = make_app()
    assert app.ttk_theme == "sun-valley-light" and app.ctx.palette is theme.LIGHT
    monkeypatch.setenv(theme.THEME_ENV, "dark")
    dark = make_app()
    assert dark.ttk_theme == "sun-valley-dark" and dark.ctx.palette is theme.DARK
    # the chat transcript's own colours follow: the model's text reads on a dark background
    assert dark.tabs["chat"].transcript.tag_cget("bot", "foreground") == theme.DARK.bot


@pytest.mark.gui
def test_without_sv_ttk_the_window_falls_back_to_clam(make_app, monkeypatch):
    monkeypatch.setitem(sys.modules, "sv_ttk", None)     # import sv_ttk raises ImportError
    app = make_app()
    assert app.ttk_theme == "clam" and app.ctx.palette is theme.LIGHT
    monkeypatch.delitem(sys.modules, "sv_ttk")
    monkeypatch.setenv(theme.THEME_ENV, "classic")
    assert make_app().ttk_theme == "clam"


@pytest.mark.gui
def test_the_theme_uses_tks_named_fonts(make_app):
    """Sun Valley asks for Segoe UI; the layout measures with TkDefaultFont, so the widgets must use it."""
    pytest.importorskip("sv_ttk")
    app = make_app()
    style = ttk.Style(app.root)
    assert style.lookup(".", "font") == "TkDefaultFont"
    assert style.lookup("Treeview", "font") == "TkDefaultFont"
    settle(app.root, 0.1)
