//! Streamed answers across servers: several servers behind nginx with one Redis share one upstream
//! stream through a Redis Stream.
#![allow(clippy::field_reassign_with_default)] // tests tweak one knob of a default config

use crate::support::cluster::{Cluster, ClusterConfig};
use crate::support::sse::SseReader;
use futures::future::join_all;

#[tokio::test]
async fn three_servers_behind_nginx_share_one_upstream_stream_for_300_identical_questions() {
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec![
            "--first-chunk-ms".into(),
            "1500".into(),
            "--chunk-delay-ms".into(),
            "40".into(),
            "--chunk-tokens".into(),
            "4".into(),
        ],
        capture_logs: true,
        // The test machine is shared and loaded: a Redis call slower than the default 250 ms
        // would switch a server to local mode and its own model call, which is not what this
        // test is about (tests/faults/ covers Redis trouble).
        server_env: vec![(
            "LEARNING_CHAT_REDIS__COMMAND_TIMEOUT_MS".into(),
            "2000".into(),
        )],
        ..ClusterConfig::default()
    })
    .await;
    let url = cluster.nginx_url("/api/v1/agents/history/stream");
    let streams = (0..300).map(|_| {
        let (http, url) = (cluster.http.clone(), url.clone());
        async move {
            let response = http
                .post(url)
                .json(&serde_json::json!({"message": "How did the printing press change Europe?"}))
                .send()
                .await
                .expect("nginx answers");
            let (deltas, end) = SseReader::new(response).rest().await;
            (deltas, end)
        }
    });
    let results = join_all(streams).await;
    let mut texts = std::collections::BTreeSet::new();
    let mut streamed_in_pieces = 0;
    for (deltas, end) in &results {
        assert_eq!(end.event, "done", "{end:?}");
        let done = end.json();
        assert_eq!(done["response"].as_str().unwrap(), deltas.concat());
        texts.insert(deltas.concat());
        if deltas.len() > 1 {
            streamed_in_pieces += 1;
        }
    }
    assert_eq!(texts.len(), 1, "every learner got the same answer");
    let stats = cluster.sim_stats().await;
    assert_eq!(
        stats.requests,
        1,
        "one upstream call for 300 streams on 3 servers; logs:\n{}",
        cluster.logs()
    );
    // Learners on the servers not holding the lease got the holder's pieces relayed through
    // Redis as they came (without the relay they would get the whole text in one piece at the
    // end): far more streams came in pieces than one server (~100 of the 300) could serve.
    assert!(
        streamed_in_pieces > 120,
        "{streamed_in_pieces} of 300 streams came in pieces"
    );
    let mut coalesced = 0.0;
    for server in &cluster.servers {
        let text = cluster
            .http
            .get(format!("{}/metrics", server.metrics_base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        coalesced += text
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"learning_chat_stream_time_to_first_token_seconds_count{source="coalesced"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(coalesced > 0.0, "coalesced first tokens: {coalesced}");
}

#[tokio::test]
async fn three_servers_behind_nginx_share_one_model_call_for_300_identical_streamed_completions() {
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec![
            "--first-chunk-ms".into(),
            "1500".into(),
            "--chunk-delay-ms".into(),
            "40".into(),
            "--chunk-tokens".into(),
            "4".into(),
        ],
        capture_logs: true,
        // As above: a slow shared machine must not switch a server to its own model call.
        server_env: vec![(
            "LEARNING_CHAT_REDIS__COMMAND_TIMEOUT_MS".into(),
            "2000".into(),
        )],
        ..ClusterConfig::default()
    })
    .await;
    let url = cluster.nginx_url("/v1/chat/completions");
    let body = serde_json::json!({
        "model": "history",
        "stream": true,
        "messages": [{"role": "user", "content": "Why did the Silk Road matter?"}],
    });
    let streams = (0..300).map(|_| {
        let request = cluster.http.post(url.clone()).json(&body);
        async move {
            let mut reader = SseReader::new(request.send().await.expect("nginx answers"));
            let mut content = Vec::new();
            let mut finish = None;
            loop {
                let event = reader.next_event().await.expect("data: [DONE] ends it");
                if event.data == "[DONE]" {
                    break;
                }
                let chunk = event.json();
                let choice = &chunk["choices"][0];
                if let Some(text) = choice["delta"]["content"].as_str() {
                    content.push(text.to_owned());
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    finish = Some(reason.to_owned());
                }
            }
            (content, finish)
        }
    });
    let results = join_all(streams).await;
    let texts: std::collections::BTreeSet<String> =
        results.iter().map(|(pieces, _)| pieces.concat()).collect();
    assert_eq!(texts.len(), 1, "every learner got the same answer");
    assert!(results
        .iter()
        .all(|(_, finish)| finish.as_deref() == Some("stop")));
    let streamed_in_pieces = results
        .iter()
        .filter(|(pieces, _)| pieces.len() > 1)
        .count();
    let stats = cluster.sim_stats().await;
    assert_eq!(
        stats.requests,
        1,
        "one model call for 300 streamed completions on 3 servers; logs:\n{}",
        cluster.logs()
    );
    // Relayed through Redis as they came, as for the native stream.
    assert!(
        streamed_in_pieces > 120,
        "{streamed_in_pieces} of 300 streams came in pieces"
    );
}
