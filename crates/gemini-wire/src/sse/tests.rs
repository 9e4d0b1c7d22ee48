use super::*;
use proptest::prelude::*;

fn event(name: &str, data: &str) -> SseItem {
    SseItem::Event(SseEvent {
        event: name.to_owned(),
        data: data.to_owned(),
        id: None,
    })
}

fn comment(text: &str) -> SseItem {
    SseItem::Comment(text.to_owned())
}

/// Decodes `chunks` in turn, then ends: the items up to the first error, and the error.
fn decode_chunks<'a>(
    decoder: &mut SseDecoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<SseItem>, Option<SseError>) {
    let mut items = Vec::new();
    let mut take = |decoder: &mut SseDecoder| loop {
        match decoder.next_item() {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    };
    for chunk in chunks {
        decoder.feed(chunk);
        if let Some(e) = take(decoder) {
            return (items, Some(e));
        }
    }
    decoder.end();
    let error = take(decoder);
    (items, error)
}

fn decode_whole(body: &[u8]) -> (Vec<SseItem>, Option<SseError>) {
    decode_chunks(&mut SseDecoder::new(), [body])
}

/// The body cut at every place into two chunks, and into chunks of every size: each decodes as
/// the whole body does.
fn assert_any_chunking_decodes_as_whole(body: &[u8]) -> (Vec<SseItem>, Option<SseError>) {
    let whole = decode_whole(body);
    for at in 0..=body.len() {
        let (head, tail) = body.split_at(at);
        let got = decode_chunks(&mut SseDecoder::new(), [head, tail]);
        assert_eq!(
            got,
            whole,
            "cut at {at} of {:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Every size up to 64 (a fixture's long lines make larger ones slow and no more telling).
    for size in 1..=body.len().clamp(1, 64) {
        let got = decode_chunks(&mut SseDecoder::new(), body.chunks(size));
        assert_eq!(got, whole, "chunks of {size}");
    }
    whole
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_recorded_gemini_stream_decodes_in_any_chunking() {
    let body = fixture("tests/fixtures/stream_ok.sse");
    let (items, error) = assert_any_chunking_decodes_as_whole(&body);
    assert_eq!(error, None);
    assert_eq!(items.len(), 3);
    for item in &items {
        let SseItem::Event(e) = item else {
            panic!("{item:?}")
        };
        assert_eq!((e.event.as_str(), e.id.as_deref()), ("message", None));
        let json: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(json["modelVersion"], "gemini-2.5-flash");
    }
}

#[test]
fn the_recorded_openai_stream_decodes_in_any_chunking() {
    let body = fixture("../learning-chat-engine/tests/fixtures/openai/chat_completion_stream.sse");
    let (items, error) = assert_any_chunking_decodes_as_whole(&body);
    assert_eq!(error, None);
    let data: Vec<&str> = items
        .iter()
        .map(|item| match item {
            SseItem::Event(e) if e.event == "message" => e.data.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(data.len(), 7);
    assert_eq!(data[6], "[DONE]");
    for chunk in &data[..6] {
        let json: serde_json::Value = serde_json::from_str(chunk).unwrap();
        assert_eq!(json["object"], "chat.completion.chunk");
    }
}

#[test]
fn the_service_stream_decodes_with_names_and_pings() {
    let body = ": ping\n\nevent: delta\ndata: {\"text\":\"é\"}\n\nevent: done\r\ndata: {\"cached\":true}\r\n\r\ndata: a\ndata: b\n\n";
    let (items, error) = assert_any_chunking_decodes_as_whole(body.as_bytes());
    assert_eq!(error, None);
    assert_eq!(
        items,
        vec![
            comment("ping"),
            event("delta", "{\"text\":\"é\"}"),
            event("done", "{\"cached\":true}"),
            event("message", "a\nb"),
        ]
    );
}

#[test]
fn lines_end_at_lf_crlf_or_cr_alike() {
    for end in ["\n", "\r\n", "\r"] {
        let body = [
            "event: e",
            "data: one",
            "data: two",
            "",
            ": c",
            "data: 3",
            "",
        ]
        .map(|line| format!("{line}{end}"))
        .concat();
        let (items, error) = assert_any_chunking_decodes_as_whole(body.as_bytes());
        assert_eq!(error, None, "{end:?}");
        assert_eq!(
            items,
            vec![event("e", "one\ntwo"), comment("c"), event("message", "3")],
            "{end:?}"
        );
    }
    // `\r` then `\n` is one line end even across chunks; `\n\r` is two.
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"data: x\r").unwrap(), vec![]);
    assert_eq!(
        decoder.push(b"\ndata: y\n\r").unwrap(),
        vec![event("message", "x\ny")]
    );
}

#[test]
fn fields_follow_the_spec() {
    let body = concat!(
        "data\n",       // no colon: the whole line is the field name, the value is empty
        "data:\n",      // empty value
        "data:  two\n", // only one space is removed
        "data:x:y\n",   // the first colon splits
        "retry: 10\n",  // ignored
        "unknown: z\n", // ignored
        "event\n",      // an empty name means `message`
        "\n",
        "event: named\n", // an event without data is dropped, and its name with it
        "\n",
        "data: after\n",
        "\n",
        ":\n", // an empty comment
        ":no space\n",
    );
    let (items, error) = assert_any_chunking_decodes_as_whole(body.as_bytes());
    assert_eq!(error, None);
    assert_eq!(
        items,
        vec![
            event("message", "\n\n two\nx:y"),
            event("message", "after"),
            comment(""),
            comment("no space"),
        ]
    );
}

#[test]
fn the_last_event_id_carries_over() {
    let body =
        "id: 1\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\nid: x\0y\ndata: d\n\nid\ndata: e\n\n";
    let (items, _) = assert_any_chunking_decodes_as_whole(body.as_bytes());
    let ids: Vec<Option<&str>> = items
        .iter()
        .map(|item| match item {
            SseItem::Event(e) => e.id.as_deref(),
            SseItem::Comment(_) => panic!("{item:?}"),
        })
        .collect();
    // An id with NUL is ignored; `id` without a value sets it empty.
    assert_eq!(
        ids,
        vec![Some("1"), Some("1"), Some("2"), Some("2"), Some("")]
    );
}

#[test]
fn a_leading_byte_order_mark_is_skipped_once() {
    let body = "\u{feff}data: a\n\n\u{feff}data: b\n\n";
    let (items, error) = assert_any_chunking_decodes_as_whole(body.as_bytes());
    assert_eq!(error, None);
    // The second BOM makes `\u{feff}data` an unknown field.
    assert_eq!(items, vec![event("message", "a")]);
}

#[test]
fn a_character_split_across_chunks_is_carried_over() {
    let body = "data: é€😀\n\n";
    let (items, error) = assert_any_chunking_decodes_as_whole(body.as_bytes());
    assert_eq!(error, None);
    assert_eq!(items, vec![event("message", "é€😀")]);
}

#[test]
fn invalid_utf8_is_an_error_with_its_offset_and_it_sticks() {
    let body = b"data: ok\n\ndata: a\xffb\n\ndata: never\n\n";
    let (items, error) = assert_any_chunking_decodes_as_whole(body);
    assert_eq!(items, vec![event("message", "ok")]);
    assert_eq!(error, Some(SseError::InvalidUtf8 { offset: 17 }));
    let mut decoder = SseDecoder::new();
    assert!(decoder.push(body).is_err());
    assert_eq!(
        decoder.push(b"data: more\n\n"),
        Err(SseError::InvalidUtf8 { offset: 17 })
    );
    // A character cut off by the end of the body is not UTF-8 either.
    let (items, error) = decode_whole("data: é".as_bytes().split_last().unwrap().1);
    assert_eq!(items, vec![]);
    assert_eq!(error, Some(SseError::InvalidUtf8 { offset: 6 }));
    assert!(error.unwrap().to_string().contains("not UTF-8 at byte 6"));
}

#[test]
fn an_event_or_line_over_the_limit_is_an_error() {
    let limit = 16;
    let decode = |body: &[u8], size: usize| {
        decode_chunks(
            &mut SseDecoder::with_max_event_bytes(limit),
            body.chunks(size),
        )
    };
    // Exactly at the limit: a 16-byte line.
    let fits = b"data: 0123456789\n\n";
    for size in 1..fits.len() {
        assert_eq!(
            decode(fits, size),
            (vec![event("message", "0123456789")], None)
        );
    }
    let too_large = Some(SseError::TooLarge { limit });
    // One line too long, and an event too long in many short lines; comments count too.
    for body in [
        &b"data: 0123456789a\n\n"[..],
        b"data: 01234\ndata: 56789\n\n",
        b": a comment longer than sixteen\n",
        b"data: 0123456789a",
    ] {
        for size in 1..=body.len() {
            assert_eq!(decode(body, size), (vec![], too_large.clone()), "{size}");
        }
    }
    // An unended line is stopped at the limit, before its end arrives.
    let mut decoder = SseDecoder::with_max_event_bytes(limit);
    decoder.feed(&[b'x'; 17]);
    assert_eq!(decoder.next_item(), Err(SseError::TooLarge { limit }));
    assert!(SseError::TooLarge { limit }
        .to_string()
        .contains("over 16 bytes"));
}

#[test]
fn the_end_gives_the_unfinished_event_and_has_pending_tells() {
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"event: delta\ndata: {\"te").unwrap(), vec![]);
    assert!(decoder.has_pending());
    assert_eq!(decoder.finish().unwrap(), vec![event("delta", "{\"te")]);
    assert!(!decoder.has_pending());
    assert_eq!(decoder.finish().unwrap(), vec![]);

    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"data: x\n").unwrap(), vec![]);
    assert!(decoder.has_pending());
    assert_eq!(decoder.finish().unwrap(), vec![event("message", "x")]);

    // A name without data is pending until its blank line drops it.
    let mut decoder = SseDecoder::new();
    assert!(decoder.push(b"event: delta\n").unwrap().is_empty());
    assert!(decoder.has_pending());
    assert!(decoder.push(b"\n").unwrap().is_empty());
    assert!(!decoder.has_pending());

    // Blank lines and comments leave nothing pending.
    let mut decoder = SseDecoder::new();
    assert_eq!(
        decoder.push(b": ping\n\n\r\n").unwrap(),
        vec![comment("ping")]
    );
    assert!(!decoder.has_pending());
    assert_eq!(decoder.finish().unwrap(), vec![]);
}

#[test]
fn parse_events_keeps_events_only() {
    let events = parse_events(": c\n\nevent: e\ndata: a\n\ndata: b").unwrap();
    let data: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(data, vec![("e", "a"), ("message", "b")]);
    assert!(parse_events(b"data: \xc3\n\n").is_err());
    let framed = frame_event("{\"a\":1}");
    assert_eq!(parse_events(&framed).unwrap()[0].data, "{\"a\":1}");
}

mod adapter {
    use super::*;
    use futures::executor::block_on;
    use futures::StreamExt;

    fn read(chunks: Vec<Result<&'static [u8], &'static str>>) -> (Vec<String>, bool) {
        let mut stream = SseStream::new(futures::stream::iter(chunks));
        let mut out = Vec::new();
        while let Some(item) = block_on(stream.next()) {
            out.push(match item {
                Ok(SseItem::Event(e)) => format!("{}={}", e.event, e.data),
                Ok(SseItem::Comment(c)) => format!(":{c}"),
                Err(e) => format!("error: {e}"),
            });
        }
        (out, stream.ended_unfinished())
    }

    #[test]
    fn items_come_across_chunks_and_the_end() {
        let (items, cut) = read(vec![
            Ok(&b": ping\n\nevent: delta\ndata: \xc3"[..]),
            Ok(&b"\xa9\n\ndata: last"[..]),
        ]);
        assert_eq!(items, vec![":ping", "delta=é", "message=last"]);
        assert!(cut);
        let (items, cut) = read(vec![Ok(&b"data: a\r\n\r\n"[..])]);
        assert_eq!(items, vec!["message=a"]);
        assert!(!cut);
    }

    #[test]
    fn a_body_or_decode_error_is_the_last_item() {
        let (items, _) = read(vec![
            Ok(&b"data: a\n\n"[..]),
            Err("reset"),
            Ok(&b"data: b\n\n"[..]),
        ]);
        assert_eq!(
            items,
            vec!["message=a", "error: reading the event stream: reset"]
        );
        let (items, _) = read(vec![
            Ok(&b"data: a\n\ndata: \xff\n\n"[..]),
            Ok(&b"data: b\n\n"[..]),
        ]);
        assert_eq!(
            items,
            vec!["message=a", "error: event stream is not UTF-8 at byte 15"]
        );
    }
}

/// One item of a generated stream.
#[derive(Clone, Debug)]
enum Model {
    Event {
        name: Option<String>,
        data: Vec<(String, bool)>,
        id: Option<String>,
    },
    Comment(String),
    Blank,
}

fn text() -> impl Strategy<Value = String> {
    // Any characters but line ends; NUL too, which only an `id` may not hold.
    "[^\r\n]{0,12}"
}

fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        (
            proptest::option::of(text()),
            proptest::collection::vec((text(), any::<bool>()), 1..4),
            proptest::option::of("[^\r\n\0]{0,6}"),
        )
            .prop_map(|(name, data, id)| Model::Event { name, data, id }),
        text().prop_map(Model::Comment),
        Just(Model::Blank),
    ]
}

/// Writes `items` with the given line ends and the items a reader must see.
fn encode(items: &[Model], bom: bool, ends: &[u8]) -> (Vec<u8>, Vec<SseItem>) {
    let mut lines: Vec<String> = Vec::new();
    let mut expected = Vec::new();
    let mut last_id: Option<String> = None;
    for item in items {
        match item {
            Model::Event { name, data, id } => {
                if let Some(name) = name {
                    lines.push(format!("event: {name}"));
                }
                if let Some(id) = id {
                    lines.push(format!("id: {id}"));
                    last_id = Some(id.clone());
                }
                for (value, spaced) in data {
                    // Without the space, a value starting with one would lose it.
                    if *spaced || value.starts_with(' ') {
                        lines.push(format!("data: {value}"));
                    } else {
                        lines.push(format!("data:{value}"));
                    }
                }
                lines.push(String::new());
                let name = name.clone().filter(|n| !n.is_empty());
                expected.push(SseItem::Event(SseEvent {
                    event: name.unwrap_or_else(|| "message".to_owned()),
                    data: data
                        .iter()
                        .map(|(v, _)| v.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    id: last_id.clone(),
                }));
            }
            Model::Comment(text) => {
                lines.push(format!(": {text}"));
                expected.push(SseItem::Comment(text.clone()));
            }
            Model::Blank => lines.push(String::new()),
        }
    }
    let mut body = Vec::new();
    if bom {
        body.extend_from_slice("\u{feff}".as_bytes());
    }
    let mut after_cr = false;
    for (n, line) in lines.iter().enumerate() {
        body.extend_from_slice(line.as_bytes());
        // After a lone `\r`, an empty line ended by `\n` would merge into a `\r\n`.
        let end: &[u8] = match ends[n % ends.len()] {
            _ if after_cr && line.is_empty() => b"\r",
            0 => b"\n",
            1 => b"\r\n",
            _ => b"\r",
        };
        after_cr = end == b"\r";
        body.extend_from_slice(end);
    }
    (body, expected)
}

fn split(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunks.push(body[from..cut].to_vec());
        from = cut;
    }
    chunks.push(body[from..].to_vec());
    chunks
}

proptest! {
    #[test]
    fn any_stream_in_any_chunks_decodes_to_its_items(
        items in proptest::collection::vec(model(), 0..12),
        bom in any::<bool>(),
        ends in proptest::collection::vec(0u8..3, 1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let (body, expected) = encode(&items, bom, &ends);
        let chunks = split(&body, &cuts);
        let (got, error) = decode_chunks(&mut SseDecoder::new(), chunks.iter().map(Vec::as_slice));
        prop_assert_eq!(error, None);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn any_bytes_in_any_chunks_decode_as_the_whole_body(
        body in proptest::collection::vec(
            prop_oneof![
                4 => proptest::sample::select(b"data:event:id\r\n \xc3\xa9\xff".to_vec()),
                1 => any::<u8>(),
            ],
            0..200,
        ),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        limit in 8usize..64,
    ) {
        let whole = decode_chunks(&mut SseDecoder::with_max_event_bytes(limit), [body.as_slice()]);
        let chunks = split(&body, &cuts);
        let got = decode_chunks(
            &mut SseDecoder::with_max_event_bytes(limit),
            chunks.iter().map(Vec::as_slice),
        );
        prop_assert_eq!(got, whole);
    }
}
