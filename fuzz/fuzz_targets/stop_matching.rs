//! Stop strings over streamed pieces: whatever the pieces and the stops, the text released is
//! the text generated up to the first piece that completes a stop string, cut before the
//! earliest stop string in it (all the text when none completes), as searching the text so far
//! after each piece gives. Generation ends at that piece, so later pieces never count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use text::StopMatcher;

fuzz_target!(|input: (Vec<String>, Vec<String>)| {
    let (stops, pieces) = input;
    let stops: Vec<String> = stops.into_iter().take(4).collect();
    let mut so_far = String::new();
    let mut expected = None;
    for piece in &pieces {
        so_far.push_str(piece);
        let first = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| so_far.find(s.as_str()))
            .min();
        if let Some(at) = first {
            expected = Some(so_far[..at].to_string());
            break;
        }
    }
    let expected = expected.unwrap_or(so_far);

    let mut matcher = StopMatcher::new(stops.clone());
    let mut released = String::new();
    let mut stopped = false;
    for piece in &pieces {
        let (text, stop) = matcher.push(piece);
        released.push_str(&text);
        if stop {
            stopped = true;
            break;
        }
    }
    if !stopped {
        released.push_str(&matcher.finish(String::new()));
    }
    assert_eq!(released, expected, "stops {stops:?}, pieces {pieces:?}");
});
