//! The Grafana dashboard (deploy/grafana/lb-dashboard.json) against a running lb: every metric
//! that a PromQL expression of the dashboard names must be one that lb exports, with the labels
//! the expression matches on, so that a renamed or removed metric fails here and not on a
//! user's screen. Also checks that the file is a dashboard Grafana can import.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;
use support::*;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/lb-dashboard.json"
);

/// Labels every Prometheus scrape adds to a target's series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Sample name -> the label names it carries, as lb's `/metrics` exposes them.
type Exported = BTreeMap<String, BTreeSet<String>>;

/// A metric a PromQL expression selects, and the label names of its matchers.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// What an expression names: its selectors, and the labels of `by`, `without`, `on`,
/// `ignoring` and `group_left`/`group_right` lists.
#[derive(Debug, Default, PartialEq)]
struct Names {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A label-matcher block `{a="x", b=~"y"}`: the label names.
    Matchers(Vec<String>),
    Open,
    Close,
    /// Numbers, strings, Grafana variables, operators, commas, range and subquery brackets.
    Other,
}

/// Function names and keywords: an identifier followed by `(` is a call; these never name a
/// metric even without one.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const AGGREGATIONS: &[&str] = &[
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
    "limitk",
    "limit_ratio",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Skips a quoted string starting at `i` (on its quote); the index after its closing quote.
fn skip_string(s: &[char], i: usize) -> Result<usize, String> {
    let q = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == '\\' && q != '`' {
            j += 2;
            continue;
        }
        if s[j] == q {
            return Ok(j + 1);
        }
        j += 1;
    }
    Err("unterminated string".into())
}

fn tokens(expr: &str) -> Result<Vec<Tok>, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i)?;
            out.push(Tok::Other);
        } else if c == '$' {
            // A Grafana variable: $name, ${name} or ${name:format}.
            i += 1;
            if s.get(i) == Some(&'{') {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                if i == s.len() {
                    return Err("unterminated ${...}".into());
                }
                i += 1;
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if c == '[' {
            // A range or subquery: durations and Grafana variables, no metric.
            let mut d = 0;
            loop {
                match s.get(i) {
                    None => return Err("unbalanced [".into()),
                    Some('[') => d += 1,
                    Some(']') => {
                        d -= 1;
                        if d == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == '{' {
            let mut labels = Vec::new();
            i += 1;
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                match s.get(i) {
                    None => return Err("unbalanced {".into()),
                    Some('}') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) if is_ident_start(ch) => {
                        let start = i;
                        while i < s.len() && is_ident(s[i]) {
                            i += 1;
                        }
                        labels.push(s[start..i].iter().collect());
                        while i < s.len() && (s[i].is_whitespace() || "=!~".contains(s[i])) {
                            i += 1;
                        }
                        match s.get(i) {
                            Some('"' | '\'' | '`') => i = skip_string(&s, i)?,
                            _ => return Err("a label matcher without a quoted value".into()),
                        }
                    }
                    Some(ch) => return Err(format!("unexpected {ch:?} in a label matcher")),
                }
            }
            out.push(Tok::Matchers(labels));
        } else if c.is_ascii_digit()
            || (c == '.' && s.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            // Numbers (1e-6, 0x1f, 0.99) and durations after `offset` (5m).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                if (s[i] == 'e' || s[i] == 'E') && matches!(s.get(i + 1), Some('+' | '-')) {
                    i += 1;
                }
                i += 1;
            }
            out.push(Tok::Other);
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].iter().collect()));
        } else if c == '(' {
            depth += 1;
            i += 1;
            out.push(Tok::Open);
        } else if c == ')' {
            depth -= 1;
            if depth < 0 {
                return Err("unbalanced )".into());
            }
            i += 1;
            out.push(Tok::Close);
        } else if c == '}' || c == ']' {
            return Err(format!("unbalanced {c}"));
        } else if "+-*/%^=!<>~@,".contains(c) {
            i += 1;
            out.push(Tok::Other);
        } else {
            return Err(format!("unexpected {c:?}"));
        }
    }
    if depth != 0 {
        return Err("unbalanced (".into());
    }
    Ok(out)
}

/// The metrics (and labels) a PromQL expression names.
fn promql_names(expr: &str) -> Result<Names, String> {
    let toks = tokens(expr)?;
    let mut names = Names::default();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(id) => {
                let next = toks.get(i + 1);
                if GROUPING.contains(&id.as_str()) {
                    if next == Some(&Tok::Open) {
                        i += 2;
                        while toks.get(i) != Some(&Tok::Close) {
                            match toks.get(i) {
                                Some(Tok::Ident(l)) => names.grouping.push(l.clone()),
                                Some(Tok::Other) => {}
                                t => return Err(format!("unexpected {t:?} in a label list")),
                            }
                            i += 1;
                        }
                    }
                } else if next == Some(&Tok::Open)
                    || KEYWORDS.contains(&id.as_str())
                    || (AGGREGATIONS.contains(&id.as_str())
                        && matches!(next, Some(Tok::Ident(k)) if k == "by" || k == "without"))
                {
                    // A call, an aggregation before its `by`, or a keyword.
                } else {
                    let labels = match next {
                        Some(Tok::Matchers(l)) => {
                            i += 1;
                            l.clone()
                        }
                        _ => Vec::new(),
                    };
                    names.selectors.push(Selector {
                        metric: id.clone(),
                        labels,
                    });
                }
            }
            Tok::Matchers(_) => {
                return Err(
                    "a selector without a metric name ({__name__=...}): name the metric".into(),
                )
            }
            _ => {}
        }
        i += 1;
    }
    Ok(names)
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(all_panels(&p["panels"]));
    }
    out
}

/// The PromQL inside a template variable's query: `label_values(EXPR, label)` or a query.
fn variable_promql(q: &str) -> Option<(String, Option<String>)> {
    let q = q.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(match inner.rsplit_once(',') {
            Some((e, l)) => (e.trim().to_string(), Some(l.trim().to_string())),
            None => (String::new(), Some(inner.trim().to_string())),
        });
    }
    q.strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
        .map(|e| (e.to_string(), None))
}

/// Checks one expression against what lb exports; `where_` names it in the problems.
fn check_expr(where_: &str, expr: &str, exported: &Exported, problems: &mut Vec<String>) {
    let names = match promql_names(expr) {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("{where_}: cannot read `{expr}`: {e}"));
            return;
        }
    };
    if names.selectors.is_empty() {
        problems.push(format!("{where_}: `{expr}` names no metric"));
    }
    let all_labels: BTreeSet<&str> = exported
        .values()
        .flatten()
        .map(|s| s.as_str())
        .chain(TARGET_LABELS.iter().copied())
        .collect();
    for sel in &names.selectors {
        let Some(labels) = exported.get(&sel.metric) else {
            problems.push(format!(
                "{where_}: `{}` is not a metric lb exports (in `{expr}`)",
                sel.metric
            ));
            continue;
        };
        for l in &sel.labels {
            if !labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                problems.push(format!(
                    "{where_}: `{}` has no label `{l}` (it has {labels:?}; in `{expr}`)",
                    sel.metric
                ));
            }
        }
    }
    for l in &names.grouping {
        if !all_labels.contains(l.as_str()) {
            problems.push(format!(
                "{where_}: no lb metric has the label `{l}` (in `{expr}`)"
            ));
        }
    }
}

/// Everything wrong with `dash` as a Grafana dashboard of lb's metrics.
fn check_dashboard(dash: &Value, exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |m: String| problems.push(m);
    for key in ["title", "uid"] {
        if dash[key].as_str().is_none_or(str::is_empty) {
            p(format!("dashboard: no `{key}`"));
        }
    }
    if dash["schemaVersion"].as_u64().is_none_or(|v| v < 30) {
        p("dashboard: `schemaVersion` missing or older than 30".into());
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => p("templating: no `datasource` variable of type datasource for prometheus".into()),
    }
    let ds_ok = |ds: &Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
    let mut exprs: Vec<(String, String)> = Vec::new();
    let mut grafana_labels: Vec<(String, String)> = Vec::new();
    for v in &vars {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let where_ = format!("variable ${name}");
        if !ds_ok(&v["datasource"]) {
            p(format!("{where_}: datasource is not ${{datasource}}"));
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or("");
        match variable_promql(q) {
            Some((e, label)) => {
                if !e.is_empty() {
                    exprs.push((where_.clone(), e));
                }
                if let Some(l) = label {
                    grafana_labels.push((where_, l));
                }
            }
            None => p(format!(
                "{where_}: query `{q}` is neither label_values(...) nor query_result(...)"
            )),
        }
    }
    match var("service") {
        Some(v)
            if v["query"]["query"]
                .as_str()
                .unwrap_or("")
                .contains(", service)") => {}
        _ => p("templating: no `service` variable from label_values(..., service)".into()),
    }
    let panels = all_panels(&dash["panels"]);
    if panels.iter().filter(|q| q["type"] != "row").count() == 0 {
        p("dashboard: no panels".into());
    }
    let mut ids = HashSet::new();
    let mut rects = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("");
        let where_ = format!("panel {:?}", title);
        if title.is_empty() {
            p(format!("panel {}: no title", panel["id"]));
        }
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            _ => p(format!("{where_}: missing or repeated id")),
        }
        let g = &panel["gridPos"];
        let (h, w, x, y) = (
            g["h"].as_u64(),
            g["w"].as_u64(),
            g["x"].as_u64(),
            g["y"].as_u64(),
        );
        match (h, w, x, y) {
            (Some(h), Some(w), Some(x), Some(y)) if w >= 1 && h >= 1 && x + w <= 24 => {
                for (other, (ox, oy, ow, oh)) in &rects {
                    if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                        p(format!("{where_}: overlaps panel {other:?}"));
                    }
                }
                rects.push((title.to_string(), (x, y, w, h)));
            }
            _ => p(format!(
                "{where_}: gridPos needs h, w, x, y within 24 columns"
            )),
        }
        let kind = panel["type"].as_str().unwrap_or("");
        if kind.is_empty() {
            p(format!("{where_}: no type"));
        }
        if kind == "row" || kind == "text" {
            continue;
        }
        if !ds_ok(&panel["datasource"]) {
            p(format!("{where_}: datasource is not ${{datasource}}"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            p(format!("{where_}: no targets"));
        }
        let mut refs = HashSet::new();
        for t in &targets {
            let r = t["refId"].as_str().unwrap_or("");
            if r.is_empty() || !refs.insert(r.to_string()) {
                p(format!("{where_}: a target without a unique refId"));
            }
            if !ds_ok(&t["datasource"]) {
                p(format!("{where_} {r}: datasource is not ${{datasource}}"));
            }
            match t["expr"].as_str() {
                Some(e) if !e.trim().is_empty() => exprs.push((format!("{where_} {r}"), e.into())),
                _ => p(format!("{where_} {r}: no expr")),
            }
            let legend = t["legendFormat"].as_str().unwrap_or("");
            for part in legend.split("{{").skip(1) {
                if let Some((l, _)) = part.split_once("}}") {
                    grafana_labels.push((format!("{where_} {r} legend"), l.trim().to_string()));
                }
            }
        }
    }
    for (where_, e) in &exprs {
        check_expr(where_, e, exported, &mut problems);
    }
    let all_labels: BTreeSet<&str> = exported
        .values()
        .flatten()
        .map(|s| s.as_str())
        .chain(TARGET_LABELS.iter().copied())
        .collect();
    for (where_, l) in grafana_labels {
        if !all_labels.contains(l.as_str()) {
            problems.push(format!("{where_}: no lb metric has the label `{l}`"));
        }
    }
    problems
}

/// Sample names and their label names in an OpenMetrics or Prometheus text exposition.
fn parse_exposition(text: &str) -> Exported {
    let mut out = Exported::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let s: Vec<char> = line[end + 1..].chars().collect();
            let mut i = 0;
            while i < s.len() && s[i] != '}' {
                let start = i;
                while i < s.len() && s[i] != '=' {
                    i += 1;
                }
                labels.insert(s[start..i].iter().collect::<String>().trim().to_string());
                i = skip_string(&s, i + 1).expect("a quoted label value");
                if s.get(i) == Some(&',') {
                    i += 1;
                }
            }
        }
    }
    out
}

fn read_dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read deploy/grafana/lb-dashboard.json");
    serde_json::from_str(&text).expect("deploy/grafana/lb-dashboard.json is not valid JSON")
}

/// Two services behind two listeners on two cores, each backend used once: every family of
/// lb's /metrics has samples, with every label it can carry.
fn exported_by_a_running_lb() -> Exported {
    let (a, b) = (backend("a"), backend("b"));
    let toml = two_services(&a, &b);
    let (lb, _cfg, at) = lb_with_listeners(&toml, &["l1", "l2"], &["--cores", "2"]);
    assert_eq!(request_id(at["l1"], None, "").unwrap(), "a");
    assert_eq!(request_id(at["l2"], None, "").unwrap(), "b");
    let (code, head, body) = http_request(lb.admin.unwrap(), "GET", "/metrics", &[], "");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let exported = parse_exposition(&body);
    for family in ["lb_backend_", "lb_listener_", "lb_service_", "lb_core_"] {
        assert!(
            exported.keys().any(|k| k.starts_with(family)),
            "no {family}* sample in:\n{body}"
        );
    }
    exported
}

#[test]
fn every_metric_the_dashboard_names_is_one_a_running_lb_exports() {
    let dash = read_dashboard();
    let exported = exported_by_a_running_lb();
    let problems = check_dashboard(&dash, &exported);
    assert!(
        problems.is_empty(),
        "deploy/grafana/lb-dashboard.json:\n  {}\n(lb exports: {:?})",
        problems.join("\n  "),
        exported.keys().collect::<Vec<_>>()
    );
    // Metrics without a panel are not an error (a new one may wait for its panel), but say so.
    let mut used = BTreeSet::new();
    for panel in all_panels(&dash["panels"]) {
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Ok(n) = promql_names(t["expr"].as_str().unwrap_or("")) {
                used.extend(n.selectors.into_iter().map(|s| s.metric));
            }
        }
    }
    let unused: Vec<_> = exported.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        eprintln!("metrics lb exports that no dashboard panel shows: {unused:?}");
    }
}

fn fake_exported() -> Exported {
    let mut e = Exported::new();
    for (name, labels) in [
        ("lb_backend_connections_total", &["service", "backend"][..]),
        (
            "lb_backend_connect_seconds_bucket",
            &["service", "backend", "le"][..],
        ),
        ("lb_uptime_seconds", &[][..]),
    ] {
        e.insert(name.into(), labels.iter().map(|l| l.to_string()).collect());
    }
    e
}

fn tiny_dashboard(expr: &str) -> Value {
    serde_json::json!({
        "title": "t", "uid": "t", "schemaVersion": 39,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "service", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(lb_backend_connections_total, service)"}}
        ]},
        "panels": [{"id": 1, "type": "row", "title": "r", "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0},
                    "panels": [{"id": 2, "type": "timeseries", "title": "p",
                                "gridPos": {"h": 8, "w": 12, "x": 0, "y": 1},
                                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                                "targets": [{"refId": "A", "expr": expr, "legendFormat": "{{backend}}",
                                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}]}]}]
    })
}

#[test]
fn a_panel_naming_a_metric_lb_does_not_export_fails_the_check() {
    let ok = tiny_dashboard("sum by (backend) (rate(lb_backend_connections_total[5m]))");
    assert_eq!(check_dashboard(&ok, &fake_exported()), Vec::<String>::new());
    let bad = tiny_dashboard("sum by (backend) (rate(lb_backend_connection_total[5m]))");
    let problems = check_dashboard(&bad, &fake_exported());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("`lb_backend_connection_total` is not a metric lb exports"),
        "{problems:?}"
    );
    // A foreign metric, a label the metric lacks, a grouping label nothing has.
    for (expr, want) in [
        (
            "rate(process_cpu_seconds_total[5m])",
            "`process_cpu_seconds_total` is not",
        ),
        (
            r#"lb_uptime_seconds{service="x"}"#,
            "has no label `service`",
        ),
        (
            "sum by (backnd) (lb_backend_connections_total)",
            "no lb metric has the label `backnd`",
        ),
        ("sum(rate(lb_backend_connections_total[5m]", "unbalanced ("),
    ] {
        let problems = check_dashboard(&tiny_dashboard(expr), &fake_exported());
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{expr}: {problems:?}"
        );
    }
}

#[test]
fn the_dashboard_checks_catch_a_broken_layout_and_datasource() {
    let mut d = tiny_dashboard("lb_uptime_seconds");
    d["panels"][0]["panels"][0]["datasource"]["uid"] = "prometheus-prod".into();
    d["panels"][0]["panels"][0]["gridPos"]["y"] = 0.into();
    d["templating"]["list"][1]["name"] = "svc".into();
    let problems = check_dashboard(&d, &fake_exported()).join("\n");
    for want in [
        "datasource is not ${datasource}",
        "overlaps panel",
        "no `service` variable",
    ] {
        assert!(problems.contains(want), "{want}: {problems}");
    }
}

#[test]
fn promql_names_reads_selectors_through_functions_aggregations_and_matchers() {
    let n = |e: &str| promql_names(e).unwrap();
    let metrics =
        |e: &str| -> Vec<String> { n(e).selectors.into_iter().map(|s| s.metric).collect() };
    assert_eq!(metrics("rate(x_total[5m])"), ["x_total"]);
    assert_eq!(
        metrics(
            "histogram_quantile(0.99, sum by (le) (rate(lb_backend_connect_seconds_bucket[5m])))"
        ),
        ["lb_backend_connect_seconds_bucket"]
    );
    assert_eq!(n("sum by (le) (x)").grouping, ["le"]);
    assert_eq!(n("sum(x) without (core, le)").grouping, ["core", "le"]);
    let m = n(
        r#"a{job=~"$job", q="}{,\"", z!~'x'} / on (job) group_left (b) max by (job) (b_c:d offset 5m) > bool 1e-6"#,
    );
    assert_eq!(
        m.selectors,
        [
            Selector {
                metric: "a".into(),
                labels: vec!["job".into(), "q".into(), "z".into()]
            },
            Selector {
                metric: "b_c:d".into(),
                labels: vec![]
            }
        ]
    );
    assert_eq!(m.grouping, ["job", "b", "job"]);
    assert_eq!(
        metrics("sum(changes(g[$__range])) + count(h[5m:1m]) * ${factor} and on () vector(1)"),
        ["g", "h"]
    );
    assert_eq!(metrics("topk(3, sum by (backend) (y))"), ["y"]);
    for bad in [
        "rate(x[5m]",
        "x{a=\"b\"",
        "x)",
        "{__name__=\"x\"}",
        "x{a=b}",
    ] {
        assert!(promql_names(bad).is_err(), "{bad}");
    }
}

#[test]
fn parse_exposition_reads_names_and_labels() {
    let e = parse_exposition("# TYPE a counter\na_total{x=\"1\",y=\"a,b=\\\"c\"} 3\nb 1\n# EOF\n");
    assert_eq!(
        e["a_total"],
        ["x", "y"].iter().map(|s| s.to_string()).collect()
    );
    assert!(e["b"].is_empty());
}
