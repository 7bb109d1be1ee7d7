//! Stop strings over streamed pieces: whatever the pieces and the stops, the text released is
//! the whole text cut before the first stop string it contains (all of it when none), as
//! finding the stops in the joined text gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use text::StopMatcher;

fuzz_target!(|input: (Vec<String>, Vec<String>)| {
    let (stops, pieces) = input;
    let stops: Vec<String> = stops.into_iter().take(4).collect();
    let whole: String = pieces.concat();
    let expected = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| whole.find(s.as_str()))
        .min()
        .map_or(whole.as_str(), |at| &whole[..at]);

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
