//! The two faces: a plain table (`--once`) and the live screen.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row as TableRow, Table as TableWidget};
use ratatui::{DefaultTerminal, Frame};

use crate::model::{Row, Sort, Table};
use crate::source::{Source, Stats};
use crate::Error;

const COLUMNS: [&str; 10] = [
    "PID", "STATE", "THREADS", "WAIT", "REQ/S", "CPU%", "USS", "PSS", "AGE", "REQUEST",
];

fn cells(r: &Row) -> [String; 10] {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let bytes = |v: Option<u64>| v.map_or("-".to_string(), ferrocorn_sizing::human_bytes);
    let (request, age) = match &r.current {
        Some((request, secs)) => (request.clone(), format!("{secs:.1}s")),
        None => ("-".into(), "-".into()),
    };
    [
        r.pid.to_string(),
        r.state.clone(),
        r.threads
            .map_or("-".into(), |(busy, total)| format!("{busy}/{total}")),
        r.waiting.map_or("-".into(), |n| n.to_string()),
        opt(r.requests_per_second, 1),
        opt(r.cpu_percent, 1),
        bytes(r.uss),
        bytes(r.pss),
        age,
        request,
    ]
}

/// The `--once` output: header lines, then one aligned row per worker.
pub fn plain(table: &Table) -> String {
    let mut out: String = table.header.iter().map(|l| format!("{l}\n")).collect();
    let rows: Vec<[String; 10]> = table.rows.iter().map(cells).collect();
    let header = COLUMNS.map(String::from);
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The live screen until `q` (or Esc, or Ctrl-C).
pub fn live(source: &Source, interval: Duration) -> Result<(), Error> {
    let first = source.fetch()?;
    let mut terminal = ratatui::init();
    let result = Screen::new(first).run(&mut terminal, source, interval);
    ratatui::restore();
    result
}

struct Screen {
    previous: Option<Stats>,
    current: Stats,
    sort: Sort,
    /// The last key's effect or the last fetch error, shown at the bottom.
    message: String,
}

impl Screen {
    fn new(first: Stats) -> Screen {
        Screen {
            previous: None,
            current: first,
            sort: Sort::Pid,
            message: String::new(),
        }
    }

    fn run(
        &mut self,
        terminal: &mut DefaultTerminal,
        source: &Source,
        interval: Duration,
    ) -> Result<(), Error> {
        let mut next_fetch = Instant::now() + interval;
        loop {
            let table = Table::new(self.previous.as_ref(), &self.current, self.sort);
            terminal
                .draw(|frame| draw(frame, &table, &self.message))
                .map_err(Error::Terminal)?;
            let wait = next_fetch.saturating_duration_since(Instant::now());
            if event::poll(wait).map_err(Error::Terminal)? {
                if let Event::Key(key) = event::read().map_err(Error::Terminal)? {
                    if key.kind == KeyEventKind::Press && !self.key(key.code, table.master_pid) {
                        return Ok(());
                    }
                }
                // A command shows its effect at once.
                next_fetch = next_fetch.min(Instant::now() + Duration::from_millis(200));
                continue;
            }
            self.refresh(source);
            next_fetch = Instant::now() + interval;
        }
    }

    fn refresh(&mut self, source: &Source) {
        match source.fetch() {
            Ok(stats) => {
                self.previous = Some(std::mem::replace(&mut self.current, stats));
            }
            Err(e) => self.message = e.to_string(),
        }
    }

    /// Act on a key; false to quit.
    fn key(&mut self, code: KeyCode, master: i32) -> bool {
        let signal = match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.message = format!("sorted by {}", self.sort.name());
                return true;
            }
            KeyCode::Char('+') => Signal::SIGTTIN,
            KeyCode::Char('-') => Signal::SIGTTOU,
            KeyCode::Char('r') => Signal::SIGHUP,
            _ => return true,
        };
        self.message = match kill(Pid::from_raw(master), signal) {
            Ok(()) => format!("sent {signal} to master {master}"),
            Err(e) => format!("cannot signal master {master}: {e}"),
        };
        true
    }
}

fn draw(frame: &mut Frame, table: &Table, message: &str) {
    let header_height = table.header.len() as u16;
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let header: Vec<Line> = table
        .header
        .iter()
        .map(|l| Line::from(l.as_str()))
        .collect();
    frame.render_widget(Paragraph::new(header), top);
    let rows = table.rows.iter().map(|r| TableRow::new(cells(r)));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Fill(1),
    ];
    let widget = TableWidget::new(rows, widths)
        .header(TableRow::new(COLUMNS).style(Style::new().add_modifier(Modifier::REVERSED)));
    frame.render_widget(widget, body);
    let help = format!(
        "+ add  - remove  r reload  s sort ({})  q quit   {message}",
        table.sort.name()
    );
    frame.render_widget(Paragraph::new(help), bottom);
}
