//! The demo model over the Open Inference Protocol (v2) REST API, as KServe and Triton serve
//! it: `GET /v2/models/<name>` (metadata), `GET /v2/models/<name>/ready`, `POST
//! /v2/models/<name>/infer` with one `[N, 4]` tensor of iris measurements (FP32 or FP64, the
//! data flat in row-major order or nested), answered with one `[N]` FP32 tensor of
//! P(virginica). The replica serves the model under any name (the gateway's service name).

use serde_json::{Value, json};

use super::model::predict;

/// The input tensor's name in the metadata (any name is taken).
pub const INPUT: &str = "measurements";
/// The output tensor's name.
pub const OUTPUT: &str = "p_virginica";

/// What a v2 path asks of the model named in it.
#[derive(Debug, PartialEq, Eq)]
pub enum Call<'a> {
    Metadata(&'a str),
    Ready(&'a str),
    Infer(&'a str),
}

/// The call a path makes: `/v2/models/<name>[/versions/<v>][/ready|/infer]`.
pub fn call(path: &str) -> Option<Call<'_>> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let mut next = parts.next();
    if next == Some("versions") {
        parts.next().filter(|v| !v.is_empty())?;
        next = parts.next();
    }
    let c = match next {
        None => Call::Metadata(name),
        Some("ready") => Call::Ready(name),
        Some("infer") => Call::Infer(name),
        Some(_) => return None,
    };
    parts.next().is_none().then_some(c)
}

/// The model's metadata.
pub fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "versions": ["1"],
        "platform": "scoregate-demo",
        "inputs": [{ "name": INPUT, "datatype": "FP32", "shape": [-1, 4] }],
        "outputs": [{ "name": OUTPUT, "datatype": "FP32", "shape": [-1] }],
    })
}

/// Run an inference request body; `Err` is the message of a 400 answer.
pub fn infer(name: &str, body: &[u8]) -> Result<Value, String> {
    let req: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let input = req
        .get("inputs")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or("expected {\"inputs\": [{\"name\", \"shape\": [N, 4], \"datatype\", \"data\"}]}")?;
    match input.get("datatype").and_then(Value::as_str) {
        Some("FP32" | "FP64") => {}
        other => return Err(format!("datatype {other:?}: expected FP32 or FP64")),
    }
    let shape: Vec<u64> = input
        .get("shape")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let [rows, 4] = shape[..] else {
        return Err(format!("shape {shape:?}: expected [N, 4]"));
    };
    let mut flat = Vec::new();
    flatten(input.get("data").unwrap_or(&Value::Null), &mut flat)?;
    let out = predict_rows(rows, &flat)?;
    let mut resp = json!({
        "model_name": name,
        "model_version": "1",
        "outputs": [{ "name": OUTPUT, "datatype": "FP32", "shape": [rows], "data": out }],
    });
    if let Some(id) = req.get("id") {
        resp["id"] = id.clone();
    }
    Ok(resp)
}

/// P(virginica), rounded to 4 places, for each row of a `[rows, 4]` tensor's values (row-major);
/// `Err` when the count does not match the shape. (REST and gRPC alike.)
pub fn predict_rows(rows: u64, values: &[f64]) -> Result<Vec<f64>, String> {
    if values.len() as u64 != rows.saturating_mul(4) {
        return Err(format!(
            "{} numbers for shape [{rows}, 4]: expected {}",
            values.len(),
            rows.saturating_mul(4)
        ));
    }
    Ok(values
        .chunks_exact(4)
        .map(|r| (predict(&[r[0], r[1], r[2], r[3]]) * 1e4).round() / 1e4)
        .collect())
}

/// The numbers of `data`, flat or nested, in row-major order.
fn flatten(data: &Value, out: &mut Vec<f64>) -> Result<(), String> {
    match data {
        Value::Number(n) => out.push(n.as_f64().ok_or("a number out of range")?),
        Value::Array(a) => {
            for v in a {
                flatten(v, out)?;
            }
        }
        _ => return Err("data: expected numbers (flat or nested arrays)".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v2_calls() {
        assert_eq!(call("/v2/models/iris"), Some(Call::Metadata("iris")));
        assert_eq!(call("/v2/models/iris/ready"), Some(Call::Ready("iris")));
        assert_eq!(call("/v2/models/iris/infer"), Some(Call::Infer("iris")));
        assert_eq!(
            call("/v2/models/iris/versions/1/infer"),
            Some(Call::Infer("iris"))
        );
        assert_eq!(call("/v2/models/iris/explain"), None);
        assert_eq!(call("/v2/models/"), None);
    }

    #[test]
    fn infers_flat_and_nested_rows() {
        let flat = br#"{"id":"a","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}"#;
        let nested = br#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}]}"#;
        for body in [&flat[..], &nested[..]] {
            let r = infer("iris", body).expect("valid");
            let data = r["outputs"][0]["data"].as_array().expect("data").clone();
            assert_eq!(data.len(), 2);
            assert!(data[0].as_f64().expect("p") < 0.01);
            assert!(data[1].as_f64().expect("p") > 0.5);
            assert_eq!(r["outputs"][0]["shape"], json!([2]));
        }
        assert_eq!(infer("iris", flat).expect("valid")["id"], "a");
    }

    #[test]
    fn refuses_wrong_shapes_with_the_expected_one() {
        let three = br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
        assert!(
            infer("iris", three)
                .expect_err("3 columns")
                .contains("[N, 4]")
        );
        let short =
            br#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        assert!(
            infer("iris", short)
                .expect_err("4 of 8")
                .contains("expected 8")
        );
        let ints =
            br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}"#;
        assert!(infer("iris", ints).expect_err("INT64").contains("FP32"));
    }
}
