"""Modal dialogs: set a value, confirm a stop, and the key help."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from clipdash.control import ControlError, parse_setting

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


HELP = """\
[b]Run list[/b]  ↑↓ or mouse: select   Enter: open the run (on a sweep: fold it)
          ← →: scroll the columns (the run names stay)   live runs come first
          space: mark and move down   c: compare marked runs
          /: filter   Esc: clear it
[b]Steering[/b]  the selected run, from the list or the run view:
          p: pause / resume   m: set max_norm   l: set LR   s: stop (asks)
          r: rewind to the checkpoint before the latest alert (asks)
          The trainer applies a command at its next step and acknowledges
          it; the answer shows in the status line.
[b]Run view[/b]  1 2 3 4: plots / params / events / config
          y: y scale auto → log → linear   Esc: back to the list
[b]Compare[/b]   n: next metric in the lower plot   y: y scale   Esc: back

[b]Columns[/b]   grad norm: total pre-clip norm of the last step
          clip%: share of the last 100 steps that were clipped
          ~: sparklines of the whole run (grad norm: max of each bucket,
          so a spike always shows; ✖: no finite value)   it/s: steps/s
[b]Markers[/b]   [bold cyan]▲[/] control   [bold red]✖[/] non-finite step (top row of a plot)  \
[green]◆[/] checkpoint

?, Esc: close this help   q: quit\
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = DIALOG_CSS.format(name="HelpScreen").replace("width: 64;", "width: 78;")
    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("question_mark", "close", "close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
