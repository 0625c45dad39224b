//! The dashboard of `kodev dev`: a fold of events and keys (`state::update`) rendered by
//! `view::view`. It knows nothing of registries or `go`; it sends the engine `Command`s.

pub mod state;
pub mod view;

use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream};
use futures::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::dev::command::Command;
use crate::event::Event;
use state::{update, Input, State};

/// At most ~20 frames a second; nothing is drawn when nothing changed.
const FRAME: Duration = Duration::from_millis(50);

/// Run the dashboard until the user quits or `stop` fires; restores the terminal either way.
pub async fn run(
    mut state: State,
    mut events: UnboundedReceiver<Event>,
    commands: UnboundedSender<Command>,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dirty = true;
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {
                if dirty {
                    if let Err(e) = terminal.draw(|f| view::view(&state, f)) {
                        break Err(e);
                    }
                    dirty = false;
                }
            }
            event = events.recv() => match event {
                Some(event) => {
                    update(&mut state, Input::Event(event));
                    dirty = true;
                }
                None => break Ok(()),
            },
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(key))) => {
                    for command in update(&mut state, Input::Key(key)) {
                        let _ = commands.send(command);
                    }
                    dirty = true;
                }
                Some(Ok(TermEvent::Resize(_, _))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            _ = &mut stop => break Ok(()),
        }
    };
    ratatui::restore();
    result
}
