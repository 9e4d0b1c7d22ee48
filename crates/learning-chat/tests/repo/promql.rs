//! Metric names in PromQL: which series the dashboard's queries and the alert rules read.

use crate::support::read;
use serde_json::Value;
use std::collections::BTreeSet;

/// PromQL words that look like metric names but are not.
pub const PROMQL_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    // Aggregations, which may be followed by a `by (...)` clause rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names an expression selects: string literals, label matchers, ranges and
/// grouping clauses removed; function names (followed by `(`) and numbers skipped.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings first (they may hold braces), then label matchers and ranges.
    let mut cleaned = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in expr.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            continue;
        }
        cleaned.push(c);
    }
    let mut flat = String::new();
    let mut depth = 0usize;
    for c in cleaned.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    let chars: Vec<char> = flat.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable such as $__rate_interval.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or duration: 0.99, 1e6, 5m, 1d.
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let is_call = chars.get(next) == Some(&'(');
            let is_keyword = PROMQL_KEYWORDS.contains(&word.as_str());
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
                && is_call
            {
                // Skip the label list of a grouping clause.
                while next < chars.len() && chars[next] != ')' {
                    next += 1;
                }
                i = next + 1;
            } else if !is_call && !is_keyword {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
pub fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (instance, le) (rate(a_seconds_bucket{route="/x/{id}", le!="1"}[5m]))) > 10
           and on() sum(rate(b_total[$__rate_interval] offset 1d)) * 60 / max(c_rpm > 0) > 1e6 or up{job="j"} == 0"#,
    );
    let expected: BTreeSet<String> = ["a_seconds_bucket", "b_total", "c_rpm", "up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

/// Every PromQL expression of the alert rules.
pub fn alert_exprs() -> Vec<(String, String)> {
    let rules: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            exprs.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    exprs
}

pub fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/learning-chat.json")).expect("the dashboard is JSON")
}

/// Every panel (rows' nested panels included).
pub fn dashboard_panels(dashboard: &Value) -> Vec<Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel.clone());
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested.iter().cloned());
        }
    }
    panels
}

/// Every PromQL expression of the dashboard: panel targets and variable queries.
pub fn dashboard_exprs() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    for panel in dashboard_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            exprs.push((
                title,
                target["expr"].as_str().expect("a target expr").to_owned(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["definition"].as_str().expect("a variable query");
        // label_values(SELECTOR, label): the selector is the PromQL part.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map_or(query, |(selector, _)| selector);
        exprs.push((format!("variable {}", variable["name"]), inner.to_owned()));
    }
    exprs
}

/// Names exported by Prometheus itself rather than the service.
pub const PROMETHEUS_OWN: &[&str] = &["up"];

/// Exported metric families deliberately left off the dashboard and alerts.
pub const NOT_ON_THE_DASHBOARD: &[&str] = &[
    // Only ever non-zero when the quota makes requests wait, which the shed and quota-usage
    // panels already show; kept for ad-hoc queries.
    "learning_chat_quota_wait_seconds",
];
