//! A corpus loaded at start-up from JSON Lines, `{"id", "text", "metadata"}` a line, indexed
//! once so that every search over it only scores.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::lexical::{Bm25Index, Bm25Params};

/// Why a corpus file was refused; line numbers count from 1, as editors show them.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot read corpus {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("corpus line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("corpus line {line}: id `{id}` is already the id of line {first}")]
    DuplicateId { line: usize, id: String, first: usize },
    #[error("the corpus has no documents")]
    Empty,
}

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
}

/// A corpus with its BM25 index; document `i` is line `i + 1` of the file.
#[derive(Debug)]
pub struct Corpus {
    name: String,
    documents: Vec<Document>,
    index: Bm25Index,
}

impl Corpus {
    /// Reads and indexes a JSON Lines file; its name is the file name (`news.jsonl`).
    pub fn load(path: &Path) -> Result<Self, CorpusError> {
        let text = std::fs::read_to_string(path).map_err(|source| CorpusError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Self::parse(name, &text)
    }

    /// Parses JSON Lines text. Blank lines may only trail, so that a document's index is always
    /// its 0-based line number.
    pub fn parse(name: String, text: &str) -> Result<Self, CorpusError> {
        let lines: Vec<&str> = text.trim_end().lines().collect();
        let mut documents = Vec::with_capacity(lines.len());
        let mut first_line_of: HashMap<String, usize> = HashMap::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let number = i + 1;
            let document = parse_line(line).map_err(|reason| CorpusError::Line { line: number, reason })?;
            if let Some(&first) = first_line_of.get(&document.id) {
                return Err(CorpusError::DuplicateId {
                    line: number,
                    id: document.id,
                    first,
                });
            }
            first_line_of.insert(document.id.clone(), number);
            documents.push(document);
        }
        if documents.is_empty() {
            return Err(CorpusError::Empty);
        }
        let index = Bm25Index::build(documents.iter().map(|d| d.text.as_str()), Bm25Params::default());
        Ok(Self {
            name,
            documents,
            index,
        })
    }

    /// The name a search request's `file` refers to.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    pub fn index(&self) -> &Bm25Index {
        &self.index
    }
}

fn parse_line(line: &str) -> Result<Document, String> {
    if line.trim().is_empty() {
        return Err(
            "empty line (a document's index is its line number, so blank lines may only trail)".into(),
        );
    }
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    let mut string = |field: &str| match object.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("`{field}` must be a string, not {other}")),
        None => Err(format!("missing `{field}`")),
    };
    let id = string("id")?;
    let text = string("text")?;
    let metadata = match object.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(metadata)) => metadata,
        Some(other) => return Err(format!("`metadata` must be an object, not {other}")),
    };
    Ok(Document { id, text, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Corpus::parse("test.jsonl".into(), text).unwrap_err().to_string()
    }

    #[test]
    fn loads_documents_in_line_order() {
        let corpus = Corpus::parse(
            "toy.jsonl".into(),
            "{\"id\": \"a\", \"text\": \"red fox\", \"metadata\": {\"k\": 1}}\n{\"id\": \"b\", \"text\": \"blue whale\"}\n\n",
        )
        .unwrap();
        assert_eq!(corpus.name(), "toy.jsonl");
        assert_eq!(corpus.documents().len(), 2);
        assert_eq!(corpus.documents()[0].metadata["k"], 1);
        assert!(corpus.documents()[1].metadata.is_empty());
        assert_eq!(corpus.index().top("whale", 1)[0].document, 1);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number_and_reason() {
        let good = r#"{"id": "a", "text": "x"}"#;
        assert_eq!(
            error(&format!("{good}\n{{oops")),
            "corpus line 2: not JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(error(&format!("{good}\n[1]")), "corpus line 2: not a JSON object");
        assert_eq!(error(r#"{"text": "x"}"#), "corpus line 1: missing `id`");
        assert_eq!(
            error(r#"{"id": 7, "text": "x"}"#),
            "corpus line 1: `id` must be a string, not 7"
        );
        assert_eq!(error(r#"{"id": "a"}"#), "corpus line 1: missing `text`");
        assert_eq!(
            error(r#"{"id": "a", "text": "x", "metadata": [1]}"#),
            "corpus line 1: `metadata` must be an object, not [1]"
        );
        assert!(error(&format!("{good}\n\n{good}")).starts_with("corpus line 2: empty line"));
        assert_eq!(
            error(&format!("{good}\n{}\n{good}", r#"{"id": "b", "text": "y"}"#)),
            "corpus line 3: id `a` is already the id of line 1"
        );
        assert_eq!(error("\n\n"), "the corpus has no documents");
    }
}
