//! The flow on a paused clock, with scripted models: what each step does to a question.

use super::*;
use crate::admission::{Admission, Ahead, ConcurrencyBound, LatencyEstimate, ModelQuotas};
use crate::agents::AgentRegistry;
use crate::cache::{MemoryCache, ResponseCache};
use crate::config::Settings;
use crate::conversations::{ConversationStore, Conversations, MemoryBounds, MemoryStore};
use crate::providers::resilience::RetryPolicy;
use crate::providers::script::Script;
use crate::providers::{ModelRouter, OfflineModel, Provider, ProviderError};
use std::num::NonZeroUsize;
use std::time::Duration;

const ANSWER: &str = "Two and two make four.";

fn unavailable() -> ProviderError {
    ProviderError::Unavailable {
        status: Some(503),
        message: "overloaded".to_owned(),
    }
}

/// No quota for any model.
fn unlimited() -> ModelQuotas {
    let none = crate::config::ModelQuota {
        rpm: 0,
        input_tpm: 0,
        rpd: 0,
    };
    ModelQuotas::new([], none, Duration::ZERO, None)
}

/// A chat service whose agents are all served by `chain`, in memory.
fn service(chain: &[Arc<Script>]) -> ChatService {
    service_with(chain, AgentRegistry::load(None).unwrap(), unlimited())
}

/// A chat service of `agents`, all served by `chain`, within `quotas`, in memory.
fn service_with(chain: &[Arc<Script>], agents: AgentRegistry, quotas: ModelQuotas) -> ChatService {
    service_with_slots(chain, agents, quotas, 10)
}

/// [`service_with`], with `slots` model calls at once.
fn service_with_slots(
    chain: &[Arc<Script>],
    agents: AgentRegistry,
    quotas: ModelQuotas,
    slots: usize,
) -> ChatService {
    let settings = Settings::default();
    let router = ModelRouter::scripted(&agents, chain);
    let conversations = Conversations::new(
        ConversationStore::Memory(Arc::new(MemoryStore::new(MemoryBounds {
            ttl: Duration::from_secs(3600),
            ..MemoryBounds::from_settings(&settings.conversation)
        }))),
        settings.conversation.clone(),
        Duration::from_secs(60),
        crate::conversations::TokenSigner::new(Duration::from_secs(3600)),
    );
    let agents_for_safety = agents.clone();
    ChatService::new(ChatDeps {
        agents,
        cache: ResponseCache::Memory(MemoryCache::new(1000, 1 << 24, Duration::from_secs(3600))),
        provider: Provider::Offline(Box::new(OfflineModel::new(&settings.offline))),
        router,
        admission: Admission::new(
            ConcurrencyBound {
                ceiling: NonZeroUsize::new(slots).unwrap(),
                floor: slots,
                rpm: 0,
                headroom: 1.0,
            },
            LatencyEstimate::new(Duration::from_secs(10), Duration::from_secs(15)),
            10,
            Duration::from_secs(30),
        ),
        quotas,
        cluster: None,
        conversations,
        retry: RetryPolicy {
            max_retries: 1,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        },
        max_message_chars: 2000,
        prices: Prices::default(),
        refusal_ttl: Duration::ZERO,
        refusal_max_bytes: 1 << 20,
        failure_share: Duration::ZERO,
        cache_scope: crate::config::CacheScope::Shared,
        redactor: Default::default(),
        moderator: None,
        experiments: Default::default(),
        safety: crate::safety::Safety::new(&settings.safety, &agents_for_safety, None, None),
    })
}

fn ask(chat: &ChatService, message: &str, within: Duration, wants_stream: bool) -> Ask {
    Ask {
        agent: chat.agent("math").unwrap(),
        message: message.to_owned(),
        attempt: None,
        conversation: super::Thread::New,
        deadline: Instant::now() + within,
        caller: Caller::anonymous(),
        wants_stream,
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Every piece of a live reply, the end last.
async fn read_all(reply: Reply) -> Vec<Piece> {
    let Reply::Live(mut live) = reply else {
        panic!("a ready reply has no pieces")
    };
    let mut pieces = Vec::new();
    while let Some(piece) = live.next().await {
        pieces.push(piece);
    }
    pieces
}

#[tokio::test(start_paused = true)]
async fn a_miss_asks_the_model_once_and_the_next_ask_is_a_ready_hit() {
    let model = Script::new("m", SECOND, &[Ok(ANSWER)]);
    let chat = service(std::slice::from_ref(&model));
    let reply = chat.ask(ask(&chat, "What is 2+2?", MINUTE, false)).await;
    let Ok(Reply::Live(live)) = reply else {
        panic!("a miss is live")
    };
    let fresh = live.finish().await.unwrap();
    assert_eq!((fresh.text.as_str(), fresh.cached), (ANSWER, false));
    assert_eq!((fresh.turn, fresh.conversation_id.is_some()), (1, true));

    let again = chat.ask(ask(&chat, "What is 2+2?  ", MINUTE, false)).await;
    let Ok(Reply::Ready(hit)) = again else {
        panic!("a hit is ready at once")
    };
    assert_eq!(
        (hit.text.as_str(), hit.cached, hit.model.as_str()),
        (ANSWER, true, "m")
    );
    assert_ne!(
        hit.conversation_id, fresh.conversation_id,
        "a new conversation"
    );
    assert_eq!(model.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn identical_asks_in_flight_share_one_call() {
    let model = Script::new("m", SECOND, &[Ok(ANSWER)]);
    let chat = service(std::slice::from_ref(&model));
    let one = async {
        chat.ask(ask(&chat, "Why?", MINUTE, false))
            .await?
            .finish()
            .await
    };
    let two = async {
        chat.ask(ask(&chat, "Why?", MINUTE, true))
            .await?
            .finish()
            .await
    };
    let (one, two) = tokio::join!(one, two);
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!((one.text.as_str(), two.text.as_str()), (ANSWER, ANSWER));
    assert!(!one.cached && !two.cached);
    assert_eq!(model.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_model_is_retried_then_the_fallback_answers_under_its_own_key() {
    let primary = Script::new("primary", SECOND, &[Err(unavailable())]);
    let fallback = Script::new("fallback", SECOND, &[Ok(ANSWER)]);
    let chat = service(&[primary.clone(), fallback.clone()]);
    let answer = chat.ask(ask(&chat, "Hm?", MINUTE, false)).await;
    let answer = answer.unwrap().finish().await.unwrap();
    assert_eq!(
        (answer.text.as_str(), answer.model.as_str()),
        (ANSWER, "fallback")
    );
    assert_eq!(
        (primary.calls(), fallback.calls()),
        (2, 1),
        "one retry, then the fallback"
    );
    // Kept under the fallback's key: the next asker asks the primary again.
    let again = chat.ask(ask(&chat, "Hm?", MINUTE, false)).await.unwrap();
    assert!(
        matches!(again, Reply::Live(_)),
        "not a hit on the primary's key"
    );
    let again = again.finish().await.unwrap();
    assert_eq!(again.model, "fallback");
    assert_eq!((primary.calls(), fallback.calls()), (4, 2));
}

#[tokio::test(start_paused = true)]
async fn a_model_slower_than_the_deadline_times_out_at_the_deadline() {
    let model = Script::new("m", Duration::from_secs(10), &[Ok(ANSWER)]);
    let chat = service(std::slice::from_ref(&model));
    let start = Instant::now();
    let result = chat.ask(ask(&chat, "Slow?", SECOND, false)).await;
    let error = result.unwrap().finish().await.unwrap_err();
    assert!(
        matches!(
            error,
            ChatError::Timeout | ChatError::Provider(ProviderError::Timeout)
        ),
        "{error:?}"
    );
    assert_eq!(start.elapsed(), SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_the_answer_in_pieces_ending_in_the_answer() {
    let model = Script::new("m", SECOND, &[Ok(ANSWER)]);
    let chat = service(std::slice::from_ref(&model));
    let pieces = read_all(chat.ask(ask(&chat, "2+2?", MINUTE, true)).await.unwrap()).await;
    let Some((Piece::Done(Ok(answer)), texts)) = pieces.split_last() else {
        panic!("the last piece is the answer: {pieces:?}")
    };
    let texts: Vec<&str> = texts
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => text.as_str(),
            Piece::Done(_) => panic!("one end only: {pieces:?}"),
        })
        .collect();
    assert_eq!(texts, ["Two ", "and ", "two ", "make ", "four."]);
    assert_eq!(texts.concat(), answer.text);
    assert_eq!(answer.text, ANSWER);
}

#[tokio::test(start_paused = true)]
async fn the_json_answer_is_the_last_item_of_the_stream() {
    let streamed = service(&[Script::new("m", SECOND, &[Ok(ANSWER)])]);
    let whole = service(&[Script::new("m", SECOND, &[Ok(ANSWER)])]);
    let pieces = read_all(
        streamed
            .ask(ask(&streamed, "2+2?", MINUTE, true))
            .await
            .unwrap(),
    )
    .await;
    let Some(Piece::Done(Ok(last))) = pieces.last() else {
        panic!("the stream ends in the answer: {pieces:?}")
    };
    let json = whole.ask(ask(&whole, "2+2?", MINUTE, false)).await;
    let json = json.unwrap().finish().await.unwrap();
    let without_id = |answer: &Answer| Answer {
        conversation_id: None,
        ..answer.clone()
    };
    assert_eq!(without_id(&json), without_id(last));
    assert!(json.conversation_id.is_some() && last.conversation_id.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_follow_up_is_answered_with_its_history_and_recorded() {
    let model = Script::new("m", SECOND, &[Ok(ANSWER)]);
    let chat = service(std::slice::from_ref(&model));
    let first = chat.ask(ask(&chat, "2+2?", MINUTE, false)).await;
    let first = first.unwrap().finish().await.unwrap();
    let follow_up = Ask {
        conversation: first.conversation_id.clone().into(),
        ..ask(&chat, "And 3+3?", MINUTE, true)
    };
    let pieces = read_all(chat.ask(follow_up).await.unwrap()).await;
    let Some(Piece::Done(Ok(second))) = pieces.last() else {
        panic!("the stream ends in the answer: {pieces:?}")
    };
    assert_eq!(
        (second.turn, &second.conversation_id),
        (2, &first.conversation_id)
    );
    assert_eq!(
        model.histories(),
        [0, 2],
        "the first exchange went with the follow-up"
    );
    let id = first.conversation_id.unwrap();
    let stored = chat.conversation(&id, None).await.unwrap();
    assert_eq!(stored.turns.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_empty_message_is_refused_before_the_model() {
    let model = Script::new("m", SECOND, &[Ok(ANSWER)]);
    let chat = service(std::slice::from_ref(&model));
    let refused = chat.ask(ask(&chat, " \n ", MINUTE, false)).await;
    assert!(matches!(refused, Err(ChatError::EmptyMessage)));
    assert_eq!(model.calls(), 0);
}

/// The math agent alone, with `spill_over` as given.
fn math_agent(spill_over: bool) -> AgentRegistry {
    AgentRegistry::from_toml(&format!(
        "[[agents]]\nid = \"math\"\nname = \"Math\"\ndescription = \"d\"\n\
         models = [\"primary\", \"spare\"]\nspill_over = {spill_over}\nsystem_prompt = \"p\"\n"
    ))
    .unwrap()
}

/// Each of the chain's two models with a quota of `rpm` requests per minute.
fn two_models(rpm: u32) -> ModelQuotas {
    let quota = crate::config::ModelQuota {
        rpm,
        input_tpm: 0,
        rpd: 0,
    };
    ModelQuotas::new(
        [("primary".to_owned(), quota), ("spare".to_owned(), quota)],
        quota,
        Duration::ZERO,
        None,
    )
}

/// Asks `n` distinct questions at once; returns each outcome.
async fn ask_many(chat: &ChatService, n: usize) -> Vec<Result<Answer, ChatError>> {
    let timed = ask_many_timed(chat, n, 30 * SECOND).await;
    timed.into_iter().map(|(outcome, _)| outcome).collect()
}

/// Asks `n` distinct questions at once, each with `within` to be answered; returns each
/// outcome with when it came, from the start.
async fn ask_many_timed(
    chat: &ChatService,
    n: usize,
    within: Duration,
) -> Vec<(Result<Answer, ChatError>, Duration)> {
    let start = Instant::now();
    futures::future::join_all((0..n).map(|i| async move {
        let outcome = match chat
            .ask(ask(chat, &format!("question {i}"), within, false))
            .await
        {
            Ok(reply) => reply.finish().await,
            Err(e) => Err(e),
        };
        (outcome, start.elapsed())
    }))
    .await
}

#[tokio::test(start_paused = true)]
async fn a_full_primary_quota_spills_over_to_the_next_model_with_room() {
    let primary = Script::new("primary", SECOND, &[Ok(ANSWER)]);
    let spare = Script::new("spare", SECOND, &[Ok(ANSWER)]);
    let chat = service_with(
        &[primary.clone(), spare.clone()],
        math_agent(true),
        two_models(3),
    );
    let outcomes = ask_many(&chat, 6).await;
    let models: Vec<&str> = outcomes
        .iter()
        .map(|o| o.as_ref().map(|a| a.model.as_str()).unwrap())
        .collect();
    assert_eq!(models.iter().filter(|m| **m == "primary").count(), 3);
    assert_eq!(models.iter().filter(|m| **m == "spare").count(), 3);
    assert_eq!((primary.calls(), spare.calls()), (3, 3));
    // Both windows are full now: a seventh question is refused, with the wait for the first
    // slot of either model (a minute after the first calls, less the second that passed).
    let refused = chat.ask(ask(&chat, "one more", 30 * SECOND, false)).await;
    let refused = refused.unwrap().finish().await.unwrap_err();
    let ChatError::Shed(shed) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(shed.reason, crate::admission::ShedReason::Quota);
    assert_eq!(shed.retry_after, 59 * SECOND);
    // A spilled answer is kept under the spare's own key: asked again, it is a hit.
    let spilled = (0..6)
        .find(|i| models[*i] == "spare")
        .map(|i| format!("question {i}"))
        .unwrap();
    let again = chat.ask(ask(&chat, &spilled, MINUTE, false)).await.unwrap();
    assert!(matches!(again, Reply::Ready(_)), "a cached spilled answer");
}

#[tokio::test(start_paused = true)]
async fn without_spill_over_a_full_primary_refuses_at_once() {
    let primary = Script::new("primary", SECOND, &[Ok(ANSWER)]);
    let spare = Script::new("spare", SECOND, &[Ok(ANSWER)]);
    let chat = service_with(
        &[primary.clone(), spare.clone()],
        math_agent(false),
        two_models(3),
    );
    let refusals: Vec<_> = ask_many_timed(&chat, 6, 30 * SECOND)
        .await
        .into_iter()
        .filter_map(|(outcome, at)| match outcome {
            Err(ChatError::Shed(shed)) => Some((shed, at)),
            Ok(answer) => {
                assert_eq!(answer.model, "primary");
                None
            }
            Err(other) => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(refusals.len(), 3);
    for (shed, at) in refusals {
        // Refused before any call ended, told to come back when the first slot frees.
        assert!(at < SECOND, "refused after {at:?}");
        assert_eq!(shed.retry_after, MINUTE);
    }
    assert_eq!((primary.calls(), spare.calls()), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn questions_the_quota_cannot_serve_behind_the_queue_are_refused_on_arrival() {
    // One model slot, calls of 1 s, 4 calls a minute, 50 s to answer: the first question
    // calls at once and three more queue for the slot, each with a quota slot still free
    // before its latest start. The rest would reach the quota only after those three calls
    // (4 s), and find it full until the first call leaves the window at 60 s.
    let primary = Script::new("primary", SECOND, &[Ok(ANSWER)]);
    let spare = Script::new("spare", SECOND, &[Ok(ANSWER)]);
    let chat = service_with_slots(
        &[primary.clone(), spare.clone()],
        math_agent(false),
        two_models(4),
        1,
    );
    let outcomes = ask_many_timed(&chat, 10, 50 * SECOND).await;
    let answered = outcomes.iter().filter(|(o, _)| o.is_ok()).count();
    assert_eq!(answered, 4);
    assert_eq!(primary.calls(), 4);
    for (outcome, at) in &outcomes[4..] {
        let Err(ChatError::Shed(shed)) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(shed.reason, crate::admission::ShedReason::Quota);
        // Told on arrival, not after the queue ahead was served...
        assert_eq!(*at, Duration::ZERO, "refused after {at:?}");
        // ...to come back when the first slot frees.
        assert_eq!(shed.retry_after, MINUTE);
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_question_hears_at_once_when_a_refusal_ahead_of_it_leaves_it_no_slot() {
    let primary = Script::new("primary", SECOND, &[Ok(ANSWER)]);
    let spare = Script::new("spare", SECOND, &[Ok(ANSWER)]);
    let chat = service_with_slots(&[primary, spare], math_agent(false), two_models(1), 1);
    let agent = chat.agent("math").unwrap();
    let deadline = Instant::now() + 50 * SECOND;
    let inner = &chat.inner;
    // Queued with the minute's one slot still free: it may be served, so it waits.
    let placed = Ahead::before_any_turn(0);
    let waiting = inner.quota_refusal_while_queued(&agent, deadline, &placed);
    tokio::pin!(waiting);
    // Checked on arrival, then (after a yield) with its queue place.
    assert!(futures::poll!(waiting.as_mut()).is_pending());
    assert!(futures::poll!(waiting.as_mut()).is_pending());
    // The question ahead takes that slot; a grant tells nobody anything.
    let quota = inner.deps.quotas.of("primary");
    quota.reserve(1, deadline).await.unwrap();
    tokio::time::advance(SECOND).await;
    assert!(futures::poll!(waiting.as_mut()).is_pending());
    // The next one is refused: the queued question learns at once that it would be too.
    quota.reserve(1, Instant::now()).await.unwrap_err();
    let shed = tokio::time::timeout(Duration::from_millis(1), waiting)
        .await
        .expect("told at once, not left waiting");
    assert_eq!(shed.reason, crate::admission::ShedReason::Quota);
    assert_eq!(shed.retry_after, 59 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_question_arriving_with_another_is_refused_once_its_queue_place_shows_it_second() {
    // Two calls a minute, one of them spent. Two questions arriving at the same moment on two
    // threads both count nobody ahead before either takes its queue place, and the one slot
    // left can serve only the first. The second learns so from the place it took (one
    // ahead), not after the first's call.
    let primary = Script::new("primary", SECOND, &[Ok(ANSWER)]);
    let spare = Script::new("spare", SECOND, &[Ok(ANSWER)]);
    let chat = service_with_slots(&[primary, spare], math_agent(false), two_models(2), 1);
    let agent = chat.agent("math").unwrap();
    let deadline = Instant::now() + 50 * SECOND;
    let quota = chat.inner.deps.quotas.of("primary");
    quota.reserve(1, deadline).await.unwrap();
    let second = Ahead::before_any_turn(1);
    let shed = tokio::time::timeout(
        Duration::from_millis(1),
        chat.inner
            .quota_refusal_while_queued(&agent, deadline, &second),
    )
    .await
    .expect("told as soon as its place is known");
    assert_eq!(shed.reason, crate::admission::ShedReason::Quota);
    assert_eq!(shed.retry_after, MINUTE);
    // First in its place, the same question may be served: it waits.
    let first = Ahead::before_any_turn(0);
    let waiting = chat
        .inner
        .quota_refusal_while_queued(&agent, deadline, &first);
    assert!(tokio::time::timeout(Duration::from_millis(1), waiting)
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_question_counted_behind_the_turns_holder_is_not_refused_once_that_holder_reserved() {
    // Three calls a minute, one of them spent: two left. The turn's holder has not reserved
    // its slot when the next question counts who goes before it (the holder), and reserves
    // it before that question's check: the quota counts it then, and the count must not
    // (CI under load: a question the quota could serve was refused, one answer short).
    let primary = Script::new("primary", SECOND, &[Ok(ANSWER)]);
    let spare = Script::new("spare", SECOND, &[Ok(ANSWER)]);
    let chat = service_with_slots(&[primary, spare], math_agent(false), two_models(3), 1);
    let agent = chat.agent("math").unwrap();
    let deadline = Instant::now() + 50 * SECOND;
    let (admission, quota) = (
        &chat.inner.deps.admission,
        chat.inner.deps.quotas.of("primary"),
    );
    quota.reserve(1, deadline).await.unwrap();
    let flow = Flow::anonymous();
    let mut holder = admission.admit_as(&flow, deadline).await.unwrap();
    let ahead = admission.ahead_of_newcomer(&flow);
    assert_eq!(admission.still_ahead(&ahead), 1, "the holder goes first");
    // The holder takes one of the two slots left and passes the turn on.
    quota.reserve(1, deadline).await.unwrap();
    holder.end_turn();
    // The one slot left serves this question: it waits for its turn, not refused.
    let waiting = chat
        .inner
        .quota_refusal_while_queued(&agent, deadline, &ahead);
    assert!(
        tokio::time::timeout(Duration::from_millis(1), waiting)
            .await
            .is_err(),
        "refused with a slot left for it"
    );
    drop(holder);
}

/// A question's future is copied whole on every move (by each layer wrapping it, into its
/// box): a records write or a Redis call inside it made a cached answer's future 16 kB in a
/// release build, and copying it cost a seventh of a cached answer's CPU (bench/RESULTS.md,
/// run 18). Rare steps that are large are boxed where they are awaited.
#[tokio::test]
async fn a_questions_future_stays_small() {
    let chat = service(&[]);
    let question = chat.ask(ask(&chat, "What is 2+2?", SECOND, false));
    let size = std::mem::size_of_val(&question);
    eprintln!("a question's future: {size} bytes");
    assert!(size <= ASK_FUTURE_BOUND, "{size} bytes");
}

/// The bound of [`a_questions_future_stays_small`]: the size when it was written (2,584 bytes,
/// in the test and the release builds alike), plus half.
const ASK_FUTURE_BOUND: usize = 2584 * 3 / 2;
