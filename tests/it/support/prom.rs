//! A small parser for the Prometheus / OpenMetrics text format, enough to look up one
//! series by name and label set regardless of label order (prometheus-client writes labels
//! in registration order) and with escaped label values (`\"`, `\\`, `\n`).
//! Also the names of the series the tests read most.

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Sorted by label name.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parse the sample lines of a Prometheus / OpenMetrics text exposition.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let split = match line.find('{') {
                Some(_) => line.rfind('}')? + 1,
                None => line.find(' ')?,
            };
            let (series, rest) = line.split_at(split);
            let (name, labels) = parse_series(series)?;
            let value = match rest.split_whitespace().next()? {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// `name{a="1",b="x\"y"}` -> (name, sorted labels). Handles `\"`, `\\` and `\n` escapes.
pub fn parse_series(series: &str) -> Option<(String, Vec<(String, String)>)> {
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series.trim().to_string(), vec![]));
    };
    let body = rest.trim_end().strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
    labels.sort();
    Some((name.trim().to_string(), labels))
}

/// `mtls_sidecar_actions_total` success series of the `default` set (flags, no config file);
/// failures carry a `reason` label too: sum them with `Sidecar::metric_sum`.
pub const SIGNAL_OK: &str =
    r#"mtls_sidecar_actions_total{set="default",action="signal",result="success"}"#;
pub const VERIFY_OK: &str =
    r#"mtls_sidecar_actions_total{set="default",action="verify",result="success"}"#;
pub const STAGE_OK: &str =
    r#"mtls_sidecar_actions_total{set="default",action="stage",result="success"}"#;
