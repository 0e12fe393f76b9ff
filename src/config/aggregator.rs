//! `external_metrics.aggregator`: the space aggregator put in front of every Datadog query.

use std::fmt;
use std::str::FromStr;

/// Space aggregator put in front of the query (`external_metrics.aggregator`, default `avg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Aggregator {
    /// `avg`
    #[default]
    Avg,
    /// `sum`
    Sum,
    /// `max`
    Max,
    /// `min`
    Min,
}

impl Aggregator {
    /// The lower-case name used in the query.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregator::Avg => "avg",
            Aggregator::Sum => "sum",
            Aggregator::Max => "max",
            Aggregator::Min => "min",
        }
    }
}

impl fmt::Display for Aggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Aggregator {
    type Err = UnknownAggregator;

    /// Parses `avg`, `sum`, `max` or `min`, ignoring ASCII case and surrounding
    /// whitespace. Anything else is an error (the Go DCA passes any string through).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        [
            Aggregator::Avg,
            Aggregator::Sum,
            Aggregator::Max,
            Aggregator::Min,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(t))
        .ok_or_else(|| UnknownAggregator(s.to_owned()))
    }
}

/// `external_metrics.aggregator` is not one of the supported space aggregators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown aggregator {0:?}: expected one of avg, sum, max, min")]
pub struct UnknownAggregator(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregator_from_str() {
        let cases: &[(&str, Option<Aggregator>)] = &[
            ("avg", Some(Aggregator::Avg)),
            ("sum", Some(Aggregator::Sum)),
            ("max", Some(Aggregator::Max)),
            ("min", Some(Aggregator::Min)),
            ("AVG", Some(Aggregator::Avg)),
            (" max ", Some(Aggregator::Max)),
            ("", None),
            ("count", None),
            ("median", None),
            ("avg:", None),
        ];
        for (s, want) in cases {
            match want {
                Some(a) => {
                    assert_eq!(s.parse::<Aggregator>(), Ok(*a), "{s:?}");
                    assert_eq!(a.to_string().parse::<Aggregator>(), Ok(*a));
                }
                None => assert_eq!(
                    s.parse::<Aggregator>(),
                    Err(UnknownAggregator((*s).to_owned()))
                ),
            }
        }
        assert_eq!(Aggregator::default(), Aggregator::Avg);
    }
}
