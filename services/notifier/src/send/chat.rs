//! Discord and Slack layouts of a notification.

use crate::config::Severity;
use serde_json::{Value, json};

use crate::message::{Notification, NotificationKind};

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn color(n: &Notification) -> u32 {
    match (n.kind, n.severity) {
        (NotificationKind::Recovered | NotificationKind::Succeeded, _) => 0x2EB67D,
        (_, Severity::Error) => 0xE01E5A,
        (_, Severity::Warning) => 0xECB22E,
        (_, Severity::Info) => 0x36C5F0,
    }
}

/// A Discord webhook body: one embed, within Discord's limits (title 256,
/// description 4096, 25 fields of 1024).
pub fn discord(n: &Notification) -> Value {
    let fields: Vec<Value> = n
        .fields
        .iter()
        .take(25)
        .map(|(name, value)| json!({"name": name, "value": truncate(if value.is_empty() { "-" } else { value }, 1024), "inline": value.len() < 40}))
        .collect();
    let mut embed = json!({
        "title": truncate(&n.title, 256),
        "description": truncate(&n.text, 4096),
        "color": color(n),
        "fields": fields,
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "footer": {"text": format!("ferry · {}", n.severity.name())},
    });
    if let Some(link) = &n.link {
        embed["url"] = json!(link);
    }
    json!({"username": "Ferry", "embeds": [embed], "allowed_mentions": {"parse": []}})
}

/// A Slack incoming-webhook body: a header, the summary, fields in sections of ten
/// (Slack's limit), and the trace link; `text` is the notification fallback.
pub fn slack(n: &Notification) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&n.title, 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&n.text, 3000)}}),
    ];
    for chunk in n.fields.chunks(10) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(name, value)| json!({"type": "mrkdwn", "text": truncate(&format!("*{name}*\n{value}"), 2000)}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(link) = &n.link {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{link}|Open the trace>")}]}));
    }
    json!({"text": format!("{}: {}", n.title, truncate(&n.text, 500)), "blocks": blocks})
}
