//! The usage ledger: requests and tokens per key and per learner per UTC day.
