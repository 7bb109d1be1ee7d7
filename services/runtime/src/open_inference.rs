//! KServe's Open Inference Protocol (v2 REST), the model-independent part: an inference request's
//! tensors read from JSON or from the binary tensor data extension, and the response envelope.
//! Which tensors a model takes, and what it answers, is the service's business.
//!
//! Errors are [`ApiError`]s like everywhere else; under `/v2/` the shared middleware answers them
//! in the protocol's shape, `{"error": "<message>"}`.

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{excerpt, ApiError};

/// The header of the binary tensor data extension: the length of the JSON part of the body,
/// after which the inputs' bytes follow in order.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// An inference request with each input's values resolved.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for, by name, with their parameters; empty means all of them.
    pub outputs: Vec<RequestedOutput>,
}

/// One input tensor.
#[derive(Debug)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// The values of an input tensor, flat in row-major order.
#[derive(Debug)]
pub enum TensorData {
    /// `BYTES` elements given as JSON strings (binary values are sent base64-encoded there).
    Text(Vec<String>),
    /// `BYTES` elements from the binary extension: each the raw bytes, unencoded.
    Binary(Vec<Bytes>),
    Fp32(Vec<f32>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(values) => values.len(),
            Self::Binary(values) => values.len(),
            Self::Fp32(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An output the request names.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// An inference request's JSON (the whole body, or its first part with binary data after it).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = InferRequest)]
pub struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    /// The request's parameters (`top_k`...).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    /// The outputs wanted; all of them when empty.
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

/// An input tensor: its values in `data` (flat or nested, row-major), or, with
/// `parameters.binary_data_size`, that many bytes of the binary data after the JSON.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = InferInput)]
pub struct InputJson {
    name: String,
    shape: Vec<i64>,
    /// `BYTES` or `FP32`.
    datatype: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    data: Option<Value>,
}

impl InferRequest {
    /// Reads a request body: JSON alone, or, where `headers` carry [`HEADER_LENGTH`], that many
    /// bytes of JSON followed by the inputs' binary data.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, ApiError> {
        let json_length = match headers.get(HEADER_LENGTH) {
            None => body.len(),
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n <= body.len())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{HEADER_LENGTH} must be the length of the body's JSON part (at most {} bytes)",
                        body.len()
                    ))
                })?,
        };
        let (json, mut binary) = body.split_at(json_length);
        let request: RequestJson = serde_json::from_slice(json)
            .map_err(|e| ApiError::bad_request(format!("invalid inference request: {e}")))?;
        if request.inputs.is_empty() {
            return Err(ApiError::bad_request("the request has no inputs"));
        }
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for input in request.inputs {
            inputs.push(input.resolve(&mut binary)?);
        }
        if !binary.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} bytes of binary data after the inputs' binary_data_size",
                binary.len()
            )));
        }
        Ok(Self {
            id: request.id,
            parameters: request.parameters,
            inputs,
            outputs: request.outputs,
        })
    }
}

impl InputJson {
    /// The input's values, from its `data` or from the front of `binary`.
    fn resolve(self, binary: &mut &[u8]) -> Result<InputTensor, ApiError> {
        let name = self.name;
        let shape = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "input `{}`: negative dimension in its shape",
                    excerpt(&name)
                ))
            })?;
        let elements = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                ApiError::bad_request(format!("input `{}`: its shape is too large", excerpt(&name)))
            })?;
        let wrong = |message: String| ApiError::bad_request(format!("input `{}`: {message}", excerpt(&name)));
        let binary_size = match self.parameters.get("binary_data_size") {
            None => None,
            Some(size) => Some(
                size.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| wrong("binary_data_size must be a non-negative integer".into()))?,
            ),
        };
        let data = match (binary_size, self.data) {
            (Some(_), Some(_)) => return Err(wrong("both data and binary_data_size".into())),
            (None, None) => return Err(wrong("no data".into())),
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(wrong(format!(
                        "binary_data_size {size} is past the end of the body ({} bytes left)",
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                *binary = rest;
                binary_values(&self.datatype, bytes).map_err(wrong)?
            }
            (None, Some(data)) => json_values(&self.datatype, data).map_err(wrong)?,
        };
        if data.len() != elements {
            return Err(wrong(format!(
                "shape {shape:?} holds {elements} elements but the data has {}",
                data.len()
            )));
        }
        Ok(InputTensor { name, shape, data })
    }
}

/// The datatypes inputs may have.
const DATATYPES: &str = "BYTES or FP32";

fn binary_values(datatype: &str, mut bytes: &[u8]) -> Result<TensorData, String> {
    match datatype {
        "BYTES" => {
            let mut values = Vec::new();
            while !bytes.is_empty() {
                let (length, rest) = bytes
                    .split_first_chunk::<4>()
                    .ok_or("a BYTES element is cut short in its 4-byte length")?;
                let length = u32::from_le_bytes(*length) as usize;
                if length > rest.len() {
                    return Err(format!(
                        "a BYTES element of {length} bytes runs past its binary data ({} left)",
                        rest.len()
                    ));
                }
                let (value, rest) = rest.split_at(length);
                values.push(Bytes::copy_from_slice(value));
                bytes = rest;
            }
            Ok(TensorData::Binary(values))
        }
        "FP32" => {
            if !bytes.len().is_multiple_of(4) {
                return Err(format!(
                    "{} bytes of FP32 data is not a whole number of values",
                    bytes.len()
                ));
            }
            Ok(TensorData::Fp32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ))
        }
        other => Err(format!(
            "datatype `{}` is not taken; send {DATATYPES}",
            excerpt(other)
        )),
    }
}

fn json_values(datatype: &str, data: Value) -> Result<TensorData, String> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    match datatype {
        "BYTES" => flat
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(format!(
                    "BYTES data holds `{}`, not a string",
                    excerpt(&other.to_string())
                )),
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Text),
        "FP32" => flat
            .into_iter()
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| format!("FP32 data holds `{}`, not a number", excerpt(&v.to_string())))
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Fp32),
        other => Err(format!(
            "datatype `{}` is not taken; send {DATATYPES}",
            excerpt(other)
        )),
    }
}

/// The protocol allows `data` flat or nested as the shape; both are read in row-major order.
fn flatten(value: Value, into: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|item| flatten(item, into)),
        other => into.push(other),
    }
}

/// An inference response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor, its data flat in row-major order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    /// The values, flat in row-major order.
    #[schema(value_type = Vec<serde_json::Value>)]
    pub data: Value,
}

/// How a model's metadata describes one of its tensors (`-1`: any size).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(body: &[u8], json_length: Option<usize>) -> Result<InferRequest, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(n) = json_length {
            headers.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        InferRequest::parse(&headers, body)
    }

    #[test]
    fn json_data_may_be_nested_or_flat() {
        let body = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]},
            {"name":"y","shape":[3],"datatype":"BYTES","data":["a","b","c"]}]}"#;
        let request = parse(body, None).unwrap();
        assert!(matches!(&request.inputs[0].data, TensorData::Fp32(v) if v == &[1.0, 2.0, 3.5, 4.0]));
        assert!(matches!(&request.inputs[1].data, TensorData::Text(v) if v == &["a", "b", "c"]));
    }

    #[test]
    fn binary_data_follows_the_json_in_input_order() {
        let json = br#"{"inputs":[{"name":"img","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}},
            {"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend(3u32.to_le_bytes());
        body.extend(b"abc");
        body.extend(0u32.to_le_bytes());
        body.extend(1.5f32.to_le_bytes());
        body.extend((-2f32).to_le_bytes());
        let request = parse(&body, Some(json.len())).unwrap();
        match &request.inputs[0].data {
            TensorData::Binary(values) => assert_eq!(values, &[Bytes::from("abc"), Bytes::new()]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&request.inputs[1].data, TensorData::Fp32(v) if v == &[1.5, -2.0]));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let cases: [(&[u8], Option<usize>, &str); 8] = [
            (b"{", None, "invalid inference request"),
            (br#"{"inputs":[]}"#, None, "no inputs"),
            (
                br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                None,
                "holds 3 elements but the data has 2",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                None,
                "negative dimension",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}"#,
                None,
                "datatype `INT8` is not taken",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
                None,
                "not a number",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                None,
                "no data",
            ),
            (b"{}", Some(99), "inference-header-content-length must be"),
        ];
        for (body, json_length, expected) in cases {
            let error = parse(body, json_length).unwrap_err();
            assert_eq!(error.status, 400, "{expected}");
            assert!(
                error.message.contains(expected),
                "{} lacks {expected}",
                error.message
            );
        }
    }

    #[test]
    fn binary_data_must_match_its_sizes() {
        let json = br#"{"inputs":[{"name":"img","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":8}}]}"#;
        let with_element = |length: u32, tail: &[u8]| {
            let mut body = json.to_vec();
            body.extend(length.to_le_bytes());
            body.extend(b"abcd");
            body.extend(tail);
            parse(&body, Some(json.len())).unwrap_err()
        };
        let error = with_element(100, b"");
        assert!(
            error.message.contains("runs past its binary data"),
            "{}",
            error.message
        );
        let error = with_element(4, b"extra");
        assert!(error.message.contains("after the inputs"), "{}", error.message);
    }
}
