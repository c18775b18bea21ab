//! Values that override the file: the seed projects' environment variables, then the flags.

use std::ffi::OsString;

use super::ConfigError;

/// Values that override the file: environment variables first, then command-line flags.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub backends: Option<Vec<String>>,
    pub algorithm: Option<String>,
    /// A number or "auto".
    pub cores: Option<String>,
    pub pin: Option<bool>,
    pub admin: Option<String>,
    /// `LB_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
}

impl Overrides {
    /// The seed projects' variables: `ALGORITHM`, `BACKEND_SERVERS` (comma-separated), `HOST`,
    /// `PORT`, and `LB_ADMIN_TOKEN`. Empty values count as unset; a value that is not UTF-8 is
    /// refused by name rather than ignored.
    pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Result<Overrides, ConfigError> {
        let get = |k: &str| -> Result<Option<String>, ConfigError> {
            match get(k) {
                None => Ok(None),
                Some(v) => match v.into_string() {
                    Ok(s) if s.trim().is_empty() => Ok(None),
                    Ok(s) => Ok(Some(s)),
                    Err(_) => Err(ConfigError::Invalid {
                        key: k.to_string(),
                        message: format!("the environment variable {k} is not valid UTF-8"),
                    }),
                },
            }
        };
        Ok(Overrides {
            listen: None,
            host: get("HOST")?,
            port: get("PORT")?,
            backends: get("BACKEND_SERVERS")?.map(|v| split_list(&v)),
            algorithm: get("ALGORITHM")?,
            cores: None,
            pin: None,
            admin: None,
            admin_token: get("LB_ADMIN_TOKEN")?.map(|t| t.trim().to_string()),
        })
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
            admin_token: later.admin_token.or(self.admin_token),
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
