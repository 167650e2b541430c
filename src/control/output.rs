//! `--output table|json|yaml` for the control commands' results.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub fn render(v: &Value, f: Format) -> String {
    match f {
        Format::Json => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        // A List of objects becomes a multi-document stream, as `kubectl apply -f -` reads it.
        Format::Yaml if v["kind"] == "List" => {
            let mut s = String::new();
            for item in v["items"].as_array().into_iter().flatten() {
                s.push_str("---\n");
                yaml(item, 0, &mut s);
            }
            s
        }
        Format::Yaml => {
            let mut s = String::new();
            yaml(v, 0, &mut s);
            s
        }
        Format::Table => table(v),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(scalar).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// Scalars as `KEY  value` rows; lists of objects as tables with a header row.
fn table(v: &Value) -> String {
    let Value::Object(m) = v else {
        return scalar(v) + "\n";
    };
    let width = m.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    let mut nested = Vec::new();
    for (k, val) in m {
        match val {
            Value::Array(items) if items.iter().any(Value::is_object) => nested.push((k, items)),
            Value::Object(_) => {
                out += &format!("{:width$}  {}\n", k.to_uppercase(), "");
                for line in table(val).lines() {
                    out += &format!("  {line}\n");
                }
            }
            // Long lists one item per line.
            Value::Array(items) if items.len() > 3 => {
                out += &format!("{:width$}  {} items\n", k.to_uppercase(), items.len());
                for i in items {
                    out += &format!("{:width$}  - {}\n", "", scalar(i));
                }
            }
            _ => out += &format!("{:width$}  {}\n", k.to_uppercase(), scalar(val)),
        }
    }
    for (k, items) in nested {
        out += &format!("\n{}\n", k.to_uppercase());
        let mut cols: Vec<String> = Vec::new();
        for i in items {
            if let Value::Object(o) = i {
                for c in o.keys() {
                    if !cols.contains(c) {
                        cols.push(c.clone());
                    }
                }
            }
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| cols.iter().map(|c| scalar(&i[c.as_str()])).collect())
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(n, c)| {
                rows.iter()
                    .map(|r| r[n].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
                + "\n"
        };
        out += &line(cols.iter().map(|c| c.to_uppercase()).collect());
        for r in rows {
            out += &line(r);
        }
    }
    out
}

/// YAML 1.2 (block style; strings plain when unambiguous, multi-line ones as `|` literals,
/// everything else JSON-quoted, which YAML reads as it is).
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if m.is_empty() => out.push_str(&format!("{pad}{{}}\n")),
        Value::Array(a) if a.is_empty() => out.push_str(&format!("{pad}[]\n")),
        Value::Object(m) => {
            for (k, val) in m {
                out.push_str(&format!("{pad}{}:", string(k)));
                block(val, indent + 2, out);
            }
        }
        Value::Array(a) => {
            for val in a {
                match val {
                    // `- first: …` with the other keys aligned under it.
                    Value::Object(m) if !m.is_empty() => {
                        let mut item = String::new();
                        yaml(val, indent + 2, &mut item);
                        out.push_str(&pad);
                        out.push_str("- ");
                        out.push_str(&item[indent + 2..]);
                    }
                    _ => {
                        out.push_str(&format!("{pad}-"));
                        block(val, indent + 2, out);
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar_yaml(other))),
    }
}

/// The value after `key:` or `-`, nested at `indent`.
fn block(val: &Value, indent: usize, out: &mut String) {
    match val {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(val, indent, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(val, indent, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        Value::String(s) if s.contains('\n') && !s.starts_with(' ') => {
            let pad = " ".repeat(indent);
            out.push_str(if s.ends_with('\n') { " |\n" } else { " |-\n" });
            for line in s.lines() {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    out.push_str(&format!("{pad}{line}\n"));
                }
            }
        }
        other => out.push_str(&format!(" {}\n", scalar_yaml(other))),
    }
}

fn scalar_yaml(v: &Value) -> String {
    match v {
        Value::String(s) => string(s),
        other => other.to_string(),
    }
}

/// Plain when it cannot be read as anything but this string.
fn string(s: &str) -> String {
    let reserved = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~",
    ];
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !reserved.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let v = serde_json::json!({"compute": "aks1", "replicas": [{"pod": "a", "fp": "x"}], "n": null});
        let t = render(&v, Format::Table);
        assert!(t.contains("COMPUTE   aks1"), "{t}");
        assert!(t.contains("POD  FP\na    x\n"), "{t}");
        let y = render(&v, Format::Yaml);
        assert_eq!(
            y,
            "compute: aks1\nreplicas:\n  - pod: a\n    fp: x\n\"n\": null\n"
        );
        let v =
            serde_json::json!({"a": "true", "b": "x: y", "c": "l1\nl2\n", "d": "8443", "e": []});
        assert_eq!(
            render(&v, Format::Yaml),
            "a: \"true\"\nb: \"x: y\"\nc: |\n  l1\n  l2\nd: \"8443\"\ne: []\n"
        );
    }
}
