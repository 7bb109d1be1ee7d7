//! Retrieval on the tiny GPT-2 fixture: the model score is exactly the pointwise mutual
//! information its formula states (checked against the prompt log-probabilities of an
//! independent code path), reranking reorders candidates when the model disagrees with BM25,
//! and embeddings match `transformers`' mean-pooled hidden states within 1e-4.

use std::path::PathBuf;

use serde_json::Value;
use text::retrieval::{search, Bm25Index, Bm25Params, Reranker, SearchOptions};
use text::{embed, GenerateOptions, Generation, Gpt2, Gpt2Tokenizer, WeightPrecision};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gpt2-tiny")
}

fn load() -> (Gpt2, Gpt2Tokenizer) {
    let dir = fixture();
    let model = Gpt2::load(
        &dir.join("config.json"),
        &dir.join("model.safetensors"),
        WeightPrecision::F32,
        simd::level(),
    )
    .unwrap();
    (model, Gpt2Tokenizer::builtin().unwrap())
}

/// `log P(last `tail` tokens | the ones before)` through `Generation`'s echo log-probabilities.
fn tail_logprob(model: &Gpt2, tokenizer: &Gpt2Tokenizer, tokens: &[u32], tail: usize) -> f32 {
    let options = GenerateOptions {
        logprobs: Some(0),
        ..Default::default()
    };
    let (_, logprobs) = Generation::start(model, tokenizer, tokens, options).unwrap();
    logprobs[logprobs.len() - tail..].iter().map(|l| l.logprob).sum()
}

const DOCUMENTS: [&str; 5] = [
    "Fire crews fought a bushfire near Sydney on Tuesday.",
    "The council met to discuss the fire station budget.",
    "A fire broke out in a Melbourne warehouse overnight.",
    "Cricket: Australia beat India by six wickets in Sydney.",
    "Firefighters say the fire near the highway is contained.",
];

#[test]
fn model_score_is_the_pmi_of_query_and_passage() {
    let (model, tokenizer) = load();
    let reranker = Reranker::new(&model, &tokenizer, 64).unwrap();
    let query = "bushfire Sydney crews";
    let prepared = reranker.prepare(query).unwrap();
    let q = tokenizer.encode(query).unwrap();
    let eot = 50256;
    let prior = tail_logprob(&model, &tokenizer, &[[eot].as_slice(), &q].concat(), q.len());
    for document in DOCUMENTS {
        // Short documents fit the passage budget whole.
        let conditioned = [
            [eot].as_slice(),
            &tokenizer.encode(document).unwrap(),
            &tokenizer.encode("\n\n").unwrap(),
            &q,
        ]
        .concat();
        let want = tail_logprob(&model, &tokenizer, &conditioned, q.len()) - prior;
        let got = reranker.score(&prepared, document).unwrap();
        assert!((got - want).abs() < 1e-3, "{document}: {got} vs {want}");
    }
}

#[test]
fn reranking_follows_the_model_when_it_is_weighted_in() {
    let (model, tokenizer) = load();
    let reranker = Reranker::new(&model, &tokenizer, 64).unwrap();
    let index = Bm25Index::build(DOCUMENTS, Bm25Params::default());
    let query = "fire";
    let run = |rerank_weight: f32| {
        let options = SearchOptions {
            max_rerank: DOCUMENTS.len(),
            rerank_weight,
        };
        search(&index, |i| DOCUMENTS[i], query, options, &reranker, || false)
            .unwrap()
            .unwrap()
    };
    let lexical = run(0.0);
    assert!(lexical.iter().all(|hit| hit.model.is_none()));
    let lexical_order: Vec<usize> = lexical.iter().map(|h| h.document).collect();
    assert_eq!(
        lexical_order[4], 3,
        "the one document without `fire` is last: {lexical:?}"
    );

    let reranked = run(100.0);
    let prepared = reranker.prepare(query).unwrap();
    for hit in &reranked {
        let model_score = reranker.score(&prepared, DOCUMENTS[hit.document]).unwrap();
        // Scored alone or in a batch: the same up to the products' rounding.
        let model = hit.model.unwrap();
        assert!((model - model_score).abs() < 1e-4, "{model} vs {model_score}");
        assert!((hit.score - (hit.lexical + 100.0 * model)).abs() < 1e-3);
    }
    assert!(reranked.windows(2).all(|w| w[0].score >= w[1].score));
    let reranked_order: Vec<usize> = reranked.iter().map(|h| h.document).collect();
    assert_ne!(
        reranked_order, lexical_order,
        "the model never disagreed: {reranked:?}"
    );

    let stopped = search(
        &index,
        |i| DOCUMENTS[i],
        query,
        SearchOptions {
            max_rerank: 5,
            rerank_weight: 1.0,
        },
        &reranker,
        || true,
    );
    assert_eq!(stopped.unwrap(), None);
}

#[test]
fn embeddings_match_transformers_mean_pooled_hidden_states() {
    let (model, _) = load();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap()).unwrap();
    let cases = reference["prompts"].as_array().unwrap();
    let inputs: Vec<Vec<u32>> = cases
        .iter()
        .map(|case| {
            case["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let inputs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let vectors = embed(&model, &inputs).unwrap();
    assert_eq!(vectors.len(), cases.len());
    for ((case, got), tokens) in cases.iter().zip(&vectors).zip(&inputs) {
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{tokens:?}: {got:?} vs {want:?}");
        }
        let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let err = embed(&model, &[&[464], &[]]).unwrap_err().to_string();
    assert!(err.contains("input 1 has no tokens"), "{err}");
}
