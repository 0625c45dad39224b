//! Rendering the dashboard: `view(&State, &mut Frame)`, nothing else.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;

use super::state::{Focus, PlatformState, State};
use crate::headless::{human_bytes, short_digest};

struct Palette {
    color: bool,
}

impl Palette {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }
    fn state(&self, s: PlatformState) -> Style {
        let c = match s {
            PlatformState::Queued => Color::DarkGray,
            PlatformState::Building | PlatformState::Pushing => Color::Yellow,
            PlatformState::Pushed => Color::Green,
            PlatformState::Failed => Color::Red,
            PlatformState::Cancelled => Color::Magenta,
        };
        self.fg(c)
    }
    fn border(&self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        }
    }
}

const KEY_HINTS: &str = "↑↓ select  Tab focus  r rebuild  R all  d debug  a auto  c clear  ? help  q quit";

pub fn view(state: &State, frame: &mut Frame) {
    let palette = Palette { color: state.color };
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(6), Constraint::Length(1)]).areas(frame.area());
    render_header(state, &palette, frame, header);
    let left_width = (body.width / 3).clamp(28, 40);
    let [left, right] = Layout::horizontal([Constraint::Length(left_width), Constraint::Min(20)]).areas(body);
    render_artifacts(state, &palette, frame, left);
    let layer_rows = state.selected_artifact().map(|a| a.layers.len()).unwrap_or(0) as u16;
    let [log, layers, push] =
        Layout::vertical([Constraint::Min(4), Constraint::Length((layer_rows + 2).clamp(3, 8)), Constraint::Length(7)])
            .areas(right);
    render_log(state, &palette, frame, log);
    render_layers(state, &palette, frame, layers);
    render_push(state, &palette, frame, push);
    let status = state.status.as_deref().map(|s| format!("{s}  │  ")).unwrap_or_default();
    frame.render_widget(
        Paragraph::new(Line::from(vec![Span::styled(status, palette.fg(Color::Yellow)), Span::raw(KEY_HINTS)])),
        footer,
    );
    if state.help {
        render_help(&palette, frame);
    }
}

/// A bordered panel; the focused one is highlighted.
fn panel<'a>(title: impl Into<Line<'a>>, palette: &Palette, focused: bool) -> Block<'a> {
    Block::default().borders(Borders::ALL).title(title).border_style(palette.border(focused))
}

fn render_header(state: &State, palette: &Palette, frame: &mut Frame, area: Rect) {
    let on_off = |b: bool| if b { "on" } else { "off" };
    let line = Line::from(vec![
        Span::styled(" kodev dev ", palette.fg(Color::Cyan).add_modifier(Modifier::BOLD | Modifier::REVERSED)),
        Span::raw(format!(" {} │ {} │ ", state.target, if state.auto { "auto" } else { "manual" })),
        Span::styled(
            format!("debug: {}", on_off(state.debug)),
            if state.debug { palette.fg(Color::Magenta).add_modifier(Modifier::BOLD) } else { Style::default() },
        ),
        Span::raw(if state.watching { " │ watching" } else { " │ building…" }),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn render_artifacts(state: &State, palette: &Palette, frame: &mut Frame, area: Rect) {
    let mut items = Vec::new();
    for (i, a) in state.artifacts.iter().enumerate() {
        let marker = if i == state.selected { "▶ " } else { "  " };
        let mut title =
            vec![Span::styled(format!("{marker}{}", a.image), Style::default().add_modifier(Modifier::BOLD))];
        if a.debug {
            title.push(Span::styled(" DEBUG", palette.fg(Color::Magenta).add_modifier(Modifier::BOLD)));
        }
        if let Some(ms) = a.last_duration_ms {
            title.push(Span::styled(format!(" {:.1}s", ms as f64 / 1000.0), palette.fg(Color::DarkGray)));
        }
        let mut lines = vec![Line::from(title)];
        for (platform, s) in &a.platforms {
            lines.push(Line::from(vec![
                Span::raw(format!("  {platform:<14}")),
                Span::styled(s.label(), palette.state(*s)),
            ]));
        }
        let mut item = ListItem::new(lines);
        if i == state.selected {
            item = item.style(Style::default().add_modifier(Modifier::REVERSED));
        }
        items.push(item);
    }
    frame.render_widget(List::new(items).block(panel(" Artifacts ", palette, state.focus == Focus::Artifacts)), area);
}

fn render_log(state: &State, palette: &Palette, frame: &mut Frame, area: Rect) {
    let inner_height = area.height.saturating_sub(2) as usize;
    let (title, lines): (String, Vec<Line>) = match state.selected_artifact() {
        Some(a) => {
            let end = a.log.len().saturating_sub(state.log_scroll);
            let start = end.saturating_sub(inner_height);
            let lines = a
                .log
                .range(start..end)
                .map(|l| {
                    let style = if l.is_error { palette.fg(Color::Red) } else { Style::default() };
                    let prefix = if l.platform.is_empty() { String::new() } else { format!("{} ", l.platform) };
                    Line::from(vec![
                        Span::styled(prefix, palette.fg(Color::DarkGray)),
                        Span::styled(l.text.clone(), style),
                    ])
                })
                .collect();
            let scrolled = if state.log_scroll > 0 { format!(" (↑{})", state.log_scroll) } else { String::new() };
            (format!(" Build log: {}{scrolled} ", a.image), lines)
        }
        None => (" Build log ".to_string(), Vec::new()),
    };
    frame.render_widget(Paragraph::new(lines).block(panel(title, palette, state.focus == Focus::Log)), area);
}

fn render_layers(state: &State, palette: &Palette, frame: &mut Frame, area: Rect) {
    let lines: Vec<Line> = state
        .selected_artifact()
        .map(|a| {
            let several = a.platforms.len() > 1;
            a.layers
                .iter()
                .map(|l| {
                    let platform =
                        if several { format!("{:<8}", l.platform.trim_start_matches("linux/")) } else { String::new() };
                    Line::from(vec![
                        Span::raw(format!(
                            "{platform}{:<6} {} {:>9} ",
                            l.kind.to_string(),
                            short_digest(&l.digest),
                            human_bytes(l.size)
                        )),
                        if l.uploaded {
                            Span::styled("uploaded", palette.fg(Color::Yellow))
                        } else {
                            Span::styled("present", palette.fg(Color::DarkGray))
                        },
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    frame.render_widget(Paragraph::new(lines).block(panel(" Layers ", palette, state.focus == Focus::Layers)), area);
}

fn render_push(state: &State, palette: &Palette, frame: &mut Frame, area: Rect) {
    let block = panel(" Push ", palette, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(a) = state.selected_artifact() else { return };
    let [text_area, gauge_area] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    let lines = match &a.push {
        Some(p) => {
            let (name, tag) = p.tag.split('@').next().unwrap_or_default().rsplit_once(':').unwrap_or((&p.tag, ""));
            vec![
                Line::from(format!("target {name}")),
                Line::from(format!("tag    {tag}   digest {}", short_digest(&p.digest))),
                Line::from(format!(
                    "sent   {}   in {} ms   at {}",
                    human_bytes(p.bytes_uploaded),
                    p.duration_ms,
                    if p.time.is_empty() { "-" } else { &p.time }
                )),
            ]
        }
        None => vec![Line::from("not pushed yet")],
    };
    let mut lines = lines;
    if let Some(error) = &a.last_error {
        lines.push(Line::styled(error.lines().next().unwrap_or_default().to_string(), palette.fg(Color::Red)));
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), text_area);
    let ratio = a.progress().clamp(0.0, 1.0);
    let pushing = !a.platforms.is_empty() && a.platforms.iter().all(|(_, s)| *s == PlatformState::Pushing);
    let label = if pushing {
        "compiled · archiving and pushing".to_string()
    } else if a.is_busy() {
        format!("building {:.0}%", ratio * 100.0)
    } else if a.platforms.iter().any(|(_, s)| *s == PlatformState::Failed) {
        "failed".to_string()
    } else if a.push.is_some() && a.last_error.is_none() {
        "pushed".to_string()
    } else {
        "idle".to_string()
    };
    frame.render_widget(Gauge::default().gauge_style(palette.fg(Color::Green)).ratio(ratio).label(label), gauge_area);
}

fn render_help(palette: &Palette, frame: &mut Frame) {
    let area = frame.area();
    let width = 60.min(area.width);
    let height = 16.min(area.height);
    let popup = Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    let text = vec![
        Line::from("↑/↓, j/k     select an artifact (scroll in the log)"),
        Line::from("Tab          cycle panel focus"),
        Line::from("PgUp/PgDn    scroll the build log"),
        Line::from("Home/End     top / follow the log"),
        Line::from("r            rebuild the selected artifact"),
        Line::from("R            rebuild all"),
        Line::from("d            toggle debug (and rebuild)"),
        Line::from("a            toggle automatic rebuilds"),
        Line::from("c            clear the log"),
        Line::from("?            this help"),
        Line::from("q, Ctrl-C    quit"),
        Line::from(""),
        Line::from("any key closes this help"),
    ];
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(text).block(panel(" Keys ", palette, true)), popup);
}
