//! A secret value (an API key, an admin key, a URL with a password): compared, never printed.

/// A secret value: compared, never printed. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must use it (e.g. to connect).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares without an early exit, so timing does not reveal a prefix.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.is_empty() {
            return Err("a key must not be empty".into());
        }
        Ok(Secret(value.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_and_compares_whole() {
        let secret: Secret = " k-1 ".parse().unwrap();
        assert_eq!((format!("{secret}"), format!("{secret:?}")), ("***".to_string(), "***".to_string()));
        assert!(secret.matches("k-1") && !secret.matches("k-") && !secret.matches("k-12"));
        assert!("  ".parse::<Secret>().is_err());
    }
}
