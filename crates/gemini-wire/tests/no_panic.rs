//! Whatever arrives from the network, parsing it never panics: a panic inside the service's
//! shared model-call task fails every caller waiting on it (a `retryDelay` of `"1e20s"`, for
//! one, overflows a `Duration` unless clamped).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use gemini_wire::sse::{parse_events, SseDecoder};
use gemini_wire::{parse_proto_duration, ErrorBody, GenerateContentResponse, MAX_PROTO_DURATION};
use proptest::prelude::*;

fn retry_delay_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|f| format!("{f}s")),
        any::<u64>().prop_map(|n| format!("{n}s")),
        "[0-9eE.+-]{0,30}s",
        any::<String>(),
        Just("1e20s".to_owned()),
        Just("1e309s".to_owned()),
        Just("-0s".to_owned()),
        Just("NaNs".to_owned()),
    ]
}

proptest! {
    #[test]
    fn any_retry_delay_parses_to_a_bounded_duration_or_nothing(text in retry_delay_text()) {
        if let Some(delay) = parse_proto_duration(&text) {
            prop_assert!(delay <= MAX_PROTO_DURATION);
        }
    }

    #[test]
    fn any_error_body_with_any_retry_delay_is_read_without_panicking(
        delay in retry_delay_text(),
        code in any::<u16>(),
        quota_id in any::<String>(),
    ) {
        let body = serde_json::json!({"error": {
            "code": code, "message": "m", "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaId": quota_id}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": 7},
                "not an object"
            ]
        }});
        if let Ok(parsed) = serde_json::from_value::<ErrorBody>(body) {
            let _ = parsed.error.retry_delay();
            let _ = parsed.error.is_daily_quota();
            let _ = parsed.error.error_reason();
        }
    }

    #[test]
    fn any_bytes_as_a_response_or_an_error_parse_or_fail_cleanly(body in any::<Vec<u8>>()) {
        if let Ok(r) = serde_json::from_slice::<GenerateContentResponse>(&body) {
            let _ = (r.text(), r.finish_reason(), r.block_reason());
        }
        if let Ok(e) = serde_json::from_slice::<ErrorBody>(&body) {
            let _ = e.error.retry_delay();
        }
    }

    #[test]
    fn any_stream_split_anywhere_decodes_without_panicking(
        body in any::<Vec<u8>>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = parse_events(&body);
        let mut decoder = SseDecoder::new();
        let mut rest = body.as_slice();
        for cut in cuts {
            let (head, tail) = rest.split_at(cut % (rest.len() + 1));
            let _ = decoder.push(head);
            rest = tail;
        }
        let _ = decoder.push(rest);
        let _ = decoder.finish();
    }
}
