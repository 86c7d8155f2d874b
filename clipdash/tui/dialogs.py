"""Modal dialogs: set a value, confirm a stop, and the key help."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from clipdash.control import ControlError, parse_setting
from clipdash.keymap import DASHBOARD_KEYS
from clipdash.tui.runtable import ALERT_STYLES
from clipdash.tui.widgets import EVENT_MARKS, OTHER_EVENT

DIALOG_CSS = """
{name} {{
    align: center middle;
}}
{name} > Vertical {{
    width: 64;
    max-width: 100%;
    height: auto;
    border: thick $primary;
    background: $surface;
    padding: 0 1;
}}
{name} .hint {{
    color: $text-muted;
}}
{name} #error {{
    color: $error;
    height: auto;
}}
"""


class SettingDialog(ModalScreen[float | None]):
    """Asks for a number, checks it with `control.parse_setting`, and returns it (or None)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="SettingDialog")
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, key: str, run_name: str, current: float | None) -> None:
        super().__init__()
        self.key = key
        self.run_name = run_name
        self.current = current

    def compose(self) -> ComposeResult:
        now = "unknown" if self.current is None else f"{self.current:g}"
        with Vertical():
            yield Static(Text.assemble("Set ", (self.key, "bold"), " of ",
                                       (self.run_name, "bold"), f"  (now {now})"))
            yield Input(placeholder=f"new {self.key}, e.g. 0.5", id="value")
            yield Static("", id="error")
            yield Static("Enter sends it to the trainer · Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            value = parse_setting(self.key, event.value.strip())
        except ControlError as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(value)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#error", Static).update("")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmDialog")
    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Static("y: yes · n / Esc: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


# What the keys alone do not say. The keys come from `clipdash.keymap` (as `watch --help`
# lists them) and the marks from the tables that draw them, so none is written twice.
NOTES = (
    "Live runs come first. The trainer applies a command at its next step and acknowledges "
    "it; the answer shows in the status line.",
)
COLUMNS_HELP = (
    ("grad norm", "total pre-clip norm of the last step"),
    ("clip%", "share of the last 100 steps that were clipped"),
    ("~", "whole-run sparklines (grad norm: each bucket's max, so spikes show)"),
    ("✖", "in a sparkline: not one finite value"),
    ("it/s", "steps per second"),
)


def _table(out: Text, title: str, rows: Sequence[tuple[Text | str, str]]) -> None:
    out.append(f"{title}\n", style="bold")
    width = max(Text(k).cell_len if isinstance(k, str) else k.cell_len for k, _ in rows)
    for key, what in rows:
        cell = Text(key, style="bold cyan") if isinstance(key, str) else key
        out.append("  ")
        out.append_text(cell)
        out.append(" " * (width - cell.cell_len + 2))
        out.append(f"{what}\n")


def help_text() -> Text:
    """The help screen: the keymap, what the columns mean, and a legend of every mark."""
    out = Text()
    _table(out, "Keys", DASHBOARD_KEYS)
    for note in NOTES:
        out.append(f"{note}\n", style="dim")
    out.append("\n")
    _table(out, "Columns", COLUMNS_HELP)
    out.append("\n")
    _table(out, "Marks in the run list", [
        (Text("!2", style=ALERT_STYLES["unseen"]), "2 alerts, some not seen yet"),
        (Text("!2", style=ALERT_STYLES["seen"]), "all seen: its run view was opened since"),
    ])
    out.append("\n")
    _table(out, "Marks under the plots and in the events tab", [
        (Text(m.char, style=m.style), m.meaning) for m in (*EVENT_MARKS.values(), OTHER_EVENT)])
    out.rstrip()
    return out


class HelpScreen(ModalScreen[None]):
    # The dialogs' frame around a scrolling body: taller than a 24-line terminal, it scrolls.
    DEFAULT_CSS = (DIALOG_CSS.format(name="HelpScreen").replace("width: 64;", "width: 84;")
                   .replace("> Vertical {", "> VerticalScroll {\n    max-height: 100%;"))
    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("question_mark", "close", "close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(help_text())

    def action_close(self) -> None:
        self.dismiss(None)
