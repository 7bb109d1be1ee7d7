//! Work read through GPT-2 a piece at a time, so that many kinds of it share one batched pass.
//!
//! A search scores its candidates and an embeddings request reads its inputs; both are many
//! token sequences whose rows do not depend on one another's. Cut into [`Piece`]s, each with
//! the sequence's own KV cache, they can ride in the same [`Gpt2::read_pieces`] pass as
//! generations' tokens and prompts, a bounded number of rows per pass, instead of taking the
//! model for as long as they last. Read alone ([`read_alone`]), they go through in passes of
//! [`PASS_ROWS`] rows, which keeps the matrix products at full speed.

use std::ops::Range;

use candle_core::Tensor;

use crate::attention::KvCache;
use crate::gpt2::Gpt2;
use crate::TextError;

/// Rows per pass of work read alone: enough for the matrix products to run at full speed, few
/// enough to keep activations small and to notice a stop request often.
pub const PASS_ROWS: usize = 2048;

/// One sequence's part of a batched pass: `tokens`, read after what `cache` holds; the logits
/// of the rows in `logits` (indices into `tokens`) are wanted. A piece that is a whole
/// sequence, with nothing to keep for later, goes without a cache.
pub struct Piece<'a> {
    pub tokens: &'a [u32],
    pub cache: Option<&'a mut KvCache>,
    pub logits: Range<usize>,
}

/// What a pass answers for one piece.
#[derive(Debug)]
pub struct PieceOutput {
    /// The final hidden states of the piece's rows (len, n_embd), after `ln_f`.
    pub hidden: Tensor,
    /// The logits of the rows asked for, in order.
    pub logits: Vec<Vec<f32>>,
}

/// Work made of token sequences read in pieces, alone or beside other work.
pub trait Reading {
    /// Rows still to be read.
    fn unread(&self) -> usize;

    /// Appends pieces of at most `rows` rows in all to `pieces` (none when `rows` is 0).
    fn claim<'s>(&'s mut self, rows: usize, pieces: &mut Vec<Piece<'s>>);

    /// Takes the pass's outputs for the pieces of the last claim, in their order.
    fn absorb(&mut self, outputs: Vec<PieceOutput>) -> Result<(), TextError>;
}

/// Reads `work` to its end in passes of about [`PASS_ROWS`] rows. `stop` is asked before each
/// pass; answers false when it said to stop.
pub fn read_alone(model: &Gpt2, work: &mut impl Reading, stop: impl Fn() -> bool) -> Result<bool, TextError> {
    while work.unread() > 0 {
        if stop() {
            return Ok(false);
        }
        let mut pieces = Vec::new();
        work.claim(PASS_ROWS, &mut pieces);
        let outputs = model.read_pieces(&mut pieces)?;
        drop(pieces);
        work.absorb(outputs)?;
    }
    Ok(true)
}

/// Token sequences read in order, each in as many pieces as the rows offered make of it, with
/// a cache of its own from its first piece to its last (then freed; a sequence read in one
/// piece needs none). The bookkeeping that [`Reading`]'s implementations share.
#[derive(Debug, Default)]
pub(crate) struct Sequences {
    tokens: Vec<Vec<u32>>,
    /// Tokens of each sequence read so far.
    read: Vec<usize>,
    caches: Vec<KvCache>,
    /// The first sequence not read to its end.
    next: usize,
    unread: usize,
    /// The pieces of the last claim: (sequence, its positions).
    claimed: Vec<(usize, Range<usize>)>,
}

impl Sequences {
    /// Sequences of at least one token each.
    pub fn new(tokens: Vec<Vec<u32>>) -> Self {
        debug_assert!(tokens.iter().all(|t| !t.is_empty()));
        let count = tokens.len();
        Self {
            unread: tokens.iter().map(Vec::len).sum(),
            read: vec![0; count],
            caches: std::iter::repeat_with(KvCache::default).take(count).collect(),
            tokens,
            next: 0,
            claimed: Vec::new(),
        }
    }

    pub fn unread(&self) -> usize {
        self.unread
    }

    /// The tokens of sequence `i`.
    pub fn tokens(&self, i: usize) -> &[u32] {
        &self.tokens[i]
    }

    /// Pieces of up to `rows` rows in all, from the first unfinished sequence on; the logits
    /// of positions `wanted(i)` of sequence `i` are asked for where a piece covers them.
    pub fn claim<'s>(
        &'s mut self,
        mut rows: usize,
        wanted: impl Fn(usize) -> Range<usize>,
        pieces: &mut Vec<Piece<'s>>,
    ) {
        self.claimed.clear();
        let first = self.next;
        let sequences = self.tokens[first..].iter().zip(&self.read[first..]);
        for (i, (tokens, &read)) in (first..).zip(sequences) {
            if rows == 0 {
                break;
            }
            let end = tokens.len().min(read + rows);
            rows -= end - read;
            self.claimed.push((i, read..end));
        }
        let caches = self.caches[first..].iter_mut();
        for ((i, positions), cache) in self.claimed.iter().zip(caches) {
            let tokens = &self.tokens[*i];
            let cache = (positions.len() < tokens.len()).then(|| {
                if cache.is_empty() {
                    cache.reserve(tokens.len());
                }
                cache
            });
            let logits = intersect(&wanted(*i), positions);
            pieces.push(Piece {
                tokens: &tokens[positions.clone()],
                cache,
                logits: logits.start - positions.start..logits.end - positions.start,
            });
        }
    }

    /// Records the last claim as read; answers its pieces, (sequence, positions, whether the
    /// sequence is now read to its end), in order.
    pub fn absorbed(&mut self) -> Vec<(usize, Range<usize>, bool)> {
        let claimed = std::mem::take(&mut self.claimed);
        claimed
            .into_iter()
            .map(|(i, positions)| {
                self.read[i] = positions.end;
                self.unread -= positions.len();
                let finished = positions.end == self.tokens[i].len();
                if finished {
                    self.caches[i] = KvCache::default();
                }
                while self.next < self.tokens.len() && self.read[self.next] == self.tokens[self.next].len() {
                    self.next += 1;
                }
                (i, positions, finished)
            })
            .collect()
    }
}

/// The part of `range` inside `within`; empty, at `within`'s start, when they do not meet.
fn intersect(range: &Range<usize>, within: &Range<usize>) -> Range<usize> {
    let start = range.start.max(within.start);
    let end = range.end.min(within.end);
    match start < end {
        true => start..end,
        false => within.start..within.start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims `rows` and marks them read; answers (sequence, positions, logits rows, cached).
    fn claim_and_read(
        sequences: &mut Sequences,
        rows: usize,
    ) -> Vec<(usize, Range<usize>, Range<usize>, bool)> {
        let mut pieces = Vec::new();
        sequences.claim(rows, |_| 2..4, &mut pieces);
        let shapes: Vec<_> = pieces
            .iter()
            .map(|p| (p.logits.clone(), p.cache.is_some()))
            .collect();
        drop(pieces);
        sequences
            .absorbed()
            .into_iter()
            .zip(shapes)
            .map(|((i, positions, _), (logits, cached))| (i, positions, logits, cached))
            .collect()
    }

    #[test]
    fn sequences_are_cut_at_the_budget_and_carry_on_where_they_stopped() {
        let mut sequences = Sequences::new(vec![vec![1; 5], vec![2; 3], vec![3; 6]]);
        assert_eq!(sequences.unread(), 14);
        // Positions 2..4 of each sequence want logits: local rows where a piece covers them.
        assert_eq!(
            claim_and_read(&mut sequences, 7),
            [(0, 0..5, 2..4, false), (1, 0..2, 0..0, true)]
        );
        assert_eq!(sequences.unread(), 7);
        assert_eq!(
            claim_and_read(&mut sequences, 4),
            [(1, 2..3, 0..1, true), (2, 0..3, 2..3, true)]
        );
        assert_eq!(claim_and_read(&mut sequences, 0), []);
        assert_eq!(claim_and_read(&mut sequences, 100), [(2, 3..6, 0..1, true)]);
        assert_eq!(sequences.unread(), 0);
        assert_eq!(claim_and_read(&mut sequences, 100), []);
    }
}
