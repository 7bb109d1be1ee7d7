//! The lexical first stage: Okapi BM25 over an inverted index.
//!
//! Text is cut into words (runs of Unicode letters and digits), lower-cased, stripped of
//! Lucene's English stop words, and stemmed with the Snowball English stemmer, so "Fires" in a
//! query finds "fire" and "firing" in a document. Each distinct surface word is stemmed once
//! (a cache), which is what lets a 100,000-document corpus index in a few seconds.

use std::collections::HashMap;

use rust_stemmers::{Algorithm, Stemmer};

/// Lucene's default English stop words: frequent enough to carry no evidence.
const STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no",
    "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to",
    "was", "will", "with",
];

/// A word of a text: its byte offset and its lower-cased form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub offset: usize,
    pub lowercase: String,
}

/// The words of `text`, stop words included, in order.
pub fn words(text: &str) -> impl Iterator<Item = Word> + '_ {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        let (offset, _) = chars.by_ref().find(|(_, c)| c.is_alphanumeric())?;
        let mut end = text.len();
        while let Some(&(i, c)) = chars.peek() {
            if !c.is_alphanumeric() {
                end = i;
                break;
            }
            chars.next();
        }
        Some(Word {
            offset,
            lowercase: text[offset..end].to_lowercase(),
        })
    })
}

/// Turns words into index terms: stop words dropped, the rest stemmed (each surface form once).
pub struct Analyzer {
    stemmer: Stemmer,
    /// Lower-cased surface word -> its stem (`None`: a stop word).
    cache: HashMap<String, Option<String>>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self {
            stemmer: Stemmer::create(Algorithm::English),
            cache: HashMap::new(),
        }
    }
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Analyzer {
    /// The index term of a lower-cased word, or `None` for a stop word.
    pub fn term(&mut self, lowercase: &str) -> Option<&str> {
        if !self.cache.contains_key(lowercase) {
            let stem = (!STOP_WORDS.contains(&lowercase)).then(|| self.stemmer.stem(lowercase).into_owned());
            self.cache.insert(lowercase.to_string(), stem);
        }
        self.cache.get(lowercase).and_then(|stem| stem.as_deref())
    }

    /// The index terms of `text`, in order, each with the byte offset of its word.
    pub fn terms(&mut self, text: &str) -> Vec<(usize, String)> {
        words(text)
            .filter_map(|word| Some((word.offset, self.term(&word.lowercase)?.to_string())))
            .collect()
    }
}

/// BM25's two knobs; the defaults are Lucene's and Robertson's usual ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Document-length normalisation (0: none, 1: full).
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75 }
    }
}

/// One occurrence list entry: a document and how often the term appears in it.
#[derive(Debug, Clone, Copy)]
struct Posting {
    document: u32,
    frequency: u32,
}

/// A document the lexical stage kept, with its BM25 score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub document: usize,
    pub score: f32,
}

/// An inverted index with BM25 scoring over a fixed set of documents.
#[derive(Debug)]
pub struct Bm25Index {
    params: Bm25Params,
    terms: HashMap<String, u32>,
    postings: Vec<Vec<Posting>>,
    /// Terms per document (stop words excluded).
    lengths: Vec<u32>,
    average_length: f32,
}

impl Bm25Index {
    /// Indexes `documents`; a document's index in the iteration is its number in answers.
    pub fn build<'a>(documents: impl IntoIterator<Item = &'a str>, params: Bm25Params) -> Self {
        let mut analyzer = Analyzer::default();
        let mut terms: HashMap<String, u32> = HashMap::new();
        let mut postings: Vec<Vec<Posting>> = Vec::new();
        let mut lengths = Vec::new();
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for (document, text) in documents.into_iter().enumerate() {
            counts.clear();
            let mut length = 0u32;
            for word in words(text) {
                let Some(term) = analyzer.term(&word.lowercase) else {
                    continue;
                };
                length += 1;
                let next = terms.len() as u32;
                let id = *terms.entry(term.to_string()).or_insert(next);
                if id as usize == postings.len() {
                    postings.push(Vec::new());
                }
                *counts.entry(id).or_default() += 1;
            }
            for (&id, &frequency) in &counts {
                postings[id as usize].push(Posting {
                    document: document as u32,
                    frequency,
                });
            }
            lengths.push(length);
        }
        let total: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        let average_length = if lengths.is_empty() {
            0.0
        } else {
            total as f32 / lengths.len() as f32
        };
        Self {
            params,
            terms,
            postings,
            lengths,
            average_length,
        }
    }

    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Distinct terms in the index.
    pub fn vocabulary_size(&self) -> usize {
        self.terms.len()
    }

    /// Lucene's BM25 inverse document frequency, which is never negative:
    /// `ln(1 + (N - n + 0.5) / (n + 0.5))` for a term in `n` of `N` documents.
    fn idf(&self, documents_with_term: usize) -> f32 {
        let n = documents_with_term as f32;
        (1.0 + (self.len() as f32 - n + 0.5) / (n + 0.5)).ln()
    }

    /// The BM25 score of every document for `query` (a query word counts once per occurrence):
    /// `sum over query terms t of idf(t) * f(t,d) * (k1 + 1) / (f(t,d) + k1 * (1 - b + b * |d| / avgdl))`.
    pub fn scores(&self, query: &str) -> Vec<f32> {
        let mut scores = vec![0.0f32; self.len()];
        let mut analyzer = Analyzer::default();
        let Bm25Params { k1, b } = self.params;
        for (_, term) in analyzer.terms(query) {
            let Some(&id) = self.terms.get(&term) else {
                continue;
            };
            let postings = &self.postings[id as usize];
            let idf = self.idf(postings.len());
            for posting in postings {
                let frequency = posting.frequency as f32;
                let length = self.lengths[posting.document as usize] as f32;
                let norm = k1 * (1.0 - b + b * length / self.average_length.max(f32::MIN_POSITIVE));
                scores[posting.document as usize] += idf * frequency * (k1 + 1.0) / (frequency + norm);
            }
        }
        scores
    }

    /// The `k` best documents for `query` among those that share a term with it, best first;
    /// equal scores in document order. When the whole set fits in `k`, every document is a
    /// candidate (those without a shared term follow with score 0, in document order), so that a
    /// small set such as a request's own documents is always ranked whole.
    pub fn top(&self, query: &str, k: usize) -> Vec<Candidate> {
        let scores = self.scores(query);
        let mut ranked: Vec<Candidate> = scores
            .iter()
            .enumerate()
            .filter(|(_, &score)| score > 0.0)
            .map(|(document, &score)| Candidate { document, score })
            .collect();
        let best_first =
            |a: &Candidate, b: &Candidate| b.score.total_cmp(&a.score).then(a.document.cmp(&b.document));
        if ranked.len() > k {
            ranked.select_nth_unstable_by(k, best_first);
            ranked.truncate(k);
        }
        ranked.sort_by(best_first);
        if self.len() > k {
            return ranked;
        }
        ranked.extend(
            scores
                .iter()
                .enumerate()
                .filter(|(_, &score)| score <= 0.0)
                .map(|(document, _)| Candidate { document, score: 0.0 }),
        );
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three documents whose scores can be worked out by hand.
    fn toy() -> Bm25Index {
        Bm25Index::build(
            [
                "The cat sat on the mat.",
                "Dogs chase cats; a dog barks.",
                "Fire crews fought the bushfire near Sydney.",
            ],
            Bm25Params::default(),
        )
    }

    #[test]
    fn words_are_unicode_runs_of_letters_and_digits() {
        let found: Vec<(usize, String)> = words("Zürich's 4:00pm — ÉTÉ naïve")
            .map(|w| (w.offset, w.lowercase))
            .collect();
        assert_eq!(
            found,
            [
                (0, "zürich".to_string()),
                (8, "s".into()),
                (10, "4".into()),
                (12, "00pm".into()),
                (21, "été".into()),
                (27, "naïve".into()),
            ]
        );
    }

    #[test]
    fn analyzer_drops_stop_words_and_stems() {
        let terms: Vec<String> = Analyzer::default()
            .terms("The Fires were burning in the hills")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(terms, ["fire", "were", "burn", "hill"]);
    }

    #[test]
    fn bm25_scores_match_the_formula_by_hand() {
        let index = toy();
        // Terms per document: [cat, sat, mat] = 3, [dog, chase, cat, dog, bark] = 5,
        // [fire, crew, fought, bushfir, near, sydney] = 6; average 14 / 3.
        assert_eq!(index.lengths, [3, 5, 6]);
        let scores = index.scores("cat");
        // "cat" is in 2 of 3 documents: idf = ln(1 + 1.5 / 2.5) = ln 1.6.
        let idf = 1.6f32.ln();
        let bm25 = |length: f32| idf * 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * length / (14.0 / 3.0)));
        assert!((scores[0] - bm25(3.0)).abs() < 1e-6, "{scores:?}");
        assert!((scores[1] - bm25(5.0)).abs() < 1e-6, "{scores:?}");
        assert_eq!(scores[2], 0.0);
        // "dogs" appears twice in document 1 (as "dogs" and "dog"): idf = ln(1 + 2.5 / 1.5).
        let scores = index.scores("DOG");
        let want = (1.0f32 + 2.5 / 1.5).ln() * 2.0 * 2.2 / (2.0 + 1.2 * (0.25 + 0.75 * 5.0 / (14.0 / 3.0)));
        assert!((scores[1] - want).abs() < 1e-6, "{scores:?}");
    }

    #[test]
    fn top_ranks_matches_and_the_whole_set_when_it_fits() {
        let index = toy();
        let ranked: Vec<usize> = index.top("cat", 3).iter().map(|c| c.document).collect();
        // The shorter document wins the tie on term frequency; the non-match follows.
        assert_eq!(ranked, [0, 1, 2]);
        let ranked: Vec<usize> = index.top("cat", 2).iter().map(|c| c.document).collect();
        assert_eq!(ranked, [0, 1]);
        let best: Vec<usize> = index
            .top("bushfire in Sydney", 1)
            .iter()
            .map(|c| c.document)
            .collect();
        assert_eq!(best, [2]);
        let everything = index.top("the of and", 3);
        assert_eq!(everything.len(), 3);
        assert!(everything.iter().all(|c| c.score == 0.0));
        assert!(index.top("the of and", 2).is_empty());
        assert!(index.top("cat", 0).is_empty());
    }
}
