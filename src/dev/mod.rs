//! `kodev dev`: first build, then watch and rebuild what each change touches.

pub mod command;
pub mod deps;
pub mod engine;
pub mod watch;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::cli::CommonArgs;
use crate::error::Result;
use crate::event::{Event, EventKind};
use crate::headless::{self, OutputFormat};
use engine::{Engine, EngineMessage, EngineSettings};
use watch::Trigger;

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print events instead of showing the dashboard (also when stdout is not a terminal).
    #[arg(long = "no-tui")]
    pub no_tui: bool,
    /// Headless output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// What triggers rebuilds.
    #[arg(long, value_enum, default_value = "notify")]
    pub trigger: Trigger,
    /// Polling interval for --trigger polling, in milliseconds.
    #[arg(long = "watch-poll-interval", default_value_t = 1000)]
    pub watch_poll_interval: u64,
    /// Only rebuild these images on change (repeatable).
    #[arg(short = 'w', long = "watch-image")]
    pub watch_images: Vec<String>,
}

pub async fn run(args: DevArgs) -> Result<i32> {
    let headless_mode = args.no_tui || !std::io::stdout().is_terminal();
    if !headless_mode {
        eprintln!("kodev: the dashboard is not available in this version; showing events as text");
    }
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<Event>();
    let (engine_tx, engine_rx) = mpsc::unbounded_channel::<EngineMessage>();

    let format = args.output;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let renderer = tokio::spawn(async move {
        let print = |event: &Event| {
            let line = headless::render(format, event);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        loop {
            tokio::select! {
                event = event_rx.recv() => match event {
                    Some(event) => print(&event),
                    None => return,
                },
                _ = &mut stop_rx => break,
            }
        }
        // Stopping: print whatever was already sent, then end.
        while let Ok(event) = event_rx.try_recv() {
            print(&event);
        }
    });

    // Commands from stdin, one per line; end of input just stops reading.
    let stdin_tx = engine_tx.clone();
    let stdin_events = event_tx.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match command::parse(&line) {
                Ok(Some(cmd)) => {
                    if stdin_tx.send(EngineMessage::Command(cmd)).is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(message) => {
                    let _ = stdin_events.send(Event {
                        artifact: String::new(),
                        time: crate::event::now_rfc3339(),
                        kind: EventKind::Error { message },
                    });
                }
            }
        }
    });
    let signal_tx = engine_tx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = signal_tx.send(EngineMessage::Command(command::Command::Quit));
        }
    });

    let settings = EngineSettings {
        options: args.common.load_options(),
        debug: args.common.debug,
        trigger: args.trigger,
        poll_interval: Duration::from_millis(args.watch_poll_interval.max(10)),
        watch_images: args.watch_images.clone(),
    };
    let result = Engine::start(settings, event_tx, engine_tx, engine_rx).await;
    let code = match result {
        Ok(engine) => engine.run().await,
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(());
    let _ = renderer.await;
    code
}
