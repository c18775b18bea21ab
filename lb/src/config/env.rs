//! Values that override the file: the seed projects' environment variables, then the flags.

/// Values that override the file: environment variables first, then command-line flags.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub backends: Option<Vec<String>>,
    pub algorithm: Option<String>,
    pub cores: Option<usize>,
    pub pin: Option<bool>,
    pub admin: Option<String>,
}

impl Overrides {
    /// The seed projects' variables: `ALGORITHM`, `BACKEND_SERVERS` (comma-separated), `HOST`,
    /// `PORT`. Empty values count as unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Overrides {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        Overrides {
            listen: None,
            host: get("HOST"),
            port: get("PORT"),
            backends: get("BACKEND_SERVERS").map(|v| split_list(&v)),
            algorithm: get("ALGORITHM"),
            cores: None,
            pin: None,
            admin: None,
        }
    }

    /// Later sources win: `self` is overridden by whatever `later` sets.
    pub fn then(self, later: Overrides) -> Overrides {
        Overrides {
            listen: later.listen.or(self.listen),
            host: later.host.or(self.host),
            port: later.port.or(self.port),
            backends: later.backends.or(self.backends),
            algorithm: later.algorithm.or(self.algorithm),
            cores: later.cores.or(self.cores),
            pin: later.pin.or(self.pin),
            admin: later.admin.or(self.admin),
        }
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
