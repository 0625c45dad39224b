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
    /// Print events instead of showing the dashboard (also with --output json, or when stdout is not a terminal).
    #[arg(long = "no-tui")]
    pub no_tui: bool,
    /// Headless output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// What triggers rebuilds.
    #[arg(long, value_enum, default_value = "notify", env = "SKAFFOLD_TRIGGER")]
    pub trigger: Trigger,
    /// Polling interval for --trigger polling, in milliseconds.
    #[arg(long = "watch-poll-interval", default_value_t = 1000, env = "SKAFFOLD_WATCH_POLL_INTERVAL")]
    pub watch_poll_interval: u64,
    /// Only rebuild these images on change (repeatable).
    #[arg(short = 'w', long = "watch-image", value_delimiter = ',', env = "SKAFFOLD_WATCH_IMAGE")]
    pub watch_images: Vec<String>,
}

pub async fn run(args: DevArgs) -> Result<i32> {
    // JSON lines are for programs: asking for them means no dashboard.
    let headless_mode = args.no_tui || args.output == OutputFormat::Json || !std::io::stdout().is_terminal();
    let (event_tx, event_rx) = mpsc::unbounded_channel::<Event>();
    let (engine_tx, engine_rx) = mpsc::unbounded_channel::<EngineMessage>();
    // Interrupt, terminate and hang-up all quit cleanly: builds are killed, the terminal restored.
    let signal_tx = engine_tx.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        let _ = signal_tx.send(EngineMessage::Command(command::Command::Quit));
    });

    let settings = EngineSettings {
        options: args.common.load_options("dev"),
        debug: args.common.debug,
        trigger: args.trigger,
        poll_interval: Duration::from_millis(args.watch_poll_interval.max(10)),
        watch_images: args.watch_images.clone(),
    };
    // Configuration errors surface here, before any screen is drawn.
    let engine = Engine::start(settings, event_tx.clone(), engine_tx.clone(), engine_rx).await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let front = if headless_mode {
        spawn_stdin_commands(engine_tx.clone(), event_tx.clone());
        tokio::spawn(render_headless(args.output, event_rx, stop_rx))
    } else {
        let plan = engine.plan();
        let artifacts = plan.artifacts.iter().map(|a| (a.image.clone(), a.platforms.describe())).collect();
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let state =
            crate::ui::state::State::new(&crate::cli::describe_target(plan), artifacts, args.common.debug, color);
        let (command_tx, mut command_rx) = mpsc::unbounded_channel();
        let forward = engine_tx.clone();
        tokio::spawn(async move {
            while let Some(cmd) = command_rx.recv().await {
                if forward.send(EngineMessage::Command(cmd)).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            if let Err(e) = crate::ui::run(state, event_rx, command_tx, stop_rx).await {
                eprintln!("kodev: the dashboard failed: {e}");
            }
        })
    };
    drop(event_tx);
    let code = engine.run().await;
    crate::pipeline::gobuild::kill_running_builds();
    let _ = stop_tx.send(());
    let _ = front.await;
    code
}

/// Commands from stdin, one per line; end of input just stops reading.
fn spawn_stdin_commands(engine: mpsc::UnboundedSender<EngineMessage>, events: mpsc::UnboundedSender<Event>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match command::parse(&line) {
                Ok(Some(cmd)) => {
                    if engine.send(EngineMessage::Command(cmd)).is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(message) => {
                    let _ = events.send(Event {
                        artifact: String::new(),
                        time: crate::event::now_rfc3339(),
                        kind: EventKind::Error { message },
                    });
                }
            }
        }
    });
}

/// Print events on stdout until stopped, then whatever was already sent.
async fn render_headless(
    format: OutputFormat,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let print = |event: &Event| {
        let line = headless::render(format, event);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => print(&event),
                None => return,
            },
            _ = &mut stop => break,
        }
    }
    while let Ok(event) = events.try_recv() {
        print(&event);
    }
}
