//! Terminal styling: `--color auto|always|never` (global); `auto` colours only when stdout
//! is a terminal and NO_COLOR is unset.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

use owo_colors::OwoColorize;

/// When to colour output (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when standard output is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always colour (even through a pipe; overrides `NO_COLOR`).
    Always,
    /// Never colour.
    Never,
}

static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Set once by the command line, before anything is printed.
pub fn set_color(choice: ColorChoice) {
    CHOICE.store(
        match choice {
            ColorChoice::Auto => 0,
            ColorChoice::Always => 1,
            ColorChoice::Never => 2,
        },
        Ordering::Relaxed,
    );
}

pub fn color_choice() -> ColorChoice {
    match CHOICE.load(Ordering::Relaxed) {
        1 => ColorChoice::Always,
        2 => ColorChoice::Never,
        _ => ColorChoice::Auto,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Paint {
    pub enabled: bool,
}

impl Paint {
    pub fn detect() -> Paint {
        match color_choice() {
            ColorChoice::Always => return Paint { enabled: true },
            ColorChoice::Never => return Paint { enabled: false },
            ColorChoice::Auto => {}
        }
        let no_color = std::env::var_os("NO_COLOR")
            .map(|v| !v.is_empty())
            .unwrap_or(false);
        Paint {
            enabled: !no_color && std::io::stdout().is_terminal(),
        }
    }
    pub fn plain() -> Paint {
        Paint { enabled: false }
    }
    fn apply(&self, s: &str, f: impl Fn(&str) -> String) -> String {
        if self.enabled {
            f(s)
        } else {
            s.to_string()
        }
    }
    pub fn bold(&self, s: &str) -> String {
        self.apply(s, |s| s.bold().to_string())
    }
    pub fn dim(&self, s: &str) -> String {
        self.apply(s, |s| s.dimmed().to_string())
    }
    pub fn red(&self, s: &str) -> String {
        self.apply(s, |s| s.red().to_string())
    }
    pub fn green(&self, s: &str) -> String {
        self.apply(s, |s| s.green().to_string())
    }
    pub fn yellow(&self, s: &str) -> String {
        self.apply(s, |s| s.yellow().to_string())
    }
    pub fn cyan(&self, s: &str) -> String {
        self.apply(s, |s| s.cyan().to_string())
    }
}
