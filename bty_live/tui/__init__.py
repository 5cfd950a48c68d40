"""`bty tui`: the Textual front-end a person sees after booting the stick.

A thin front-end over the same engine and event stream as the CLI: the plan comes from
`bty_live.flash.prepare`, the flash runs `bty_live.flash.engine.flash` in a thread worker, and each event
reaches the screens as a Textual message. Nothing here decides what may be written.

Importing this package does not import Textual; `bty_live.tui.app.make_app` builds the app.
"""
