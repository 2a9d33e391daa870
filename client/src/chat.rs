//! `chrysalis chat`: verify, open a sealed session, stream one answer.

use std::io::Write;
use std::process::ExitCode;

use chrysalis_client::session::Session;
use chrysalis_protocol::{ChatMessage, InferenceRequest, Prompt, Role, SamplingParams};

use crate::remote::{runtime, Remote};

/// Ask the enclave one question through a sealed session and stream the answer.
///
/// The evidence is verified first (see `chrysalis verify`); only then does the prompt
/// leave this machine, sealed to the verified enclave key. The answer's receipt is
/// checked: enclave signature, request hash, model root and token count.
///
/// Example: chrysalis chat --url http://127.0.0.1:8443 --allow-simulated "What is the capital of France?"
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    remote: Remote,
    /// The question.
    text: String,
    /// A system message (otherwise the model template's default).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature (0: greedy, the default).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the verification summary before the answer.
    #[arg(long)]
    show_verdict: bool,
    /// Print one JSON object (verdict, text, token ids, usage) instead of streaming.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: &Args) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(chat(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chrysalis chat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn chat(args: &Args) -> anyhow::Result<()> {
    let (endpoint, trust) = args.remote.resolve()?;
    let mut session = Session::open(&endpoint, &trust).await?;
    let insecure = session.verdict().insecure;
    let reasons: Vec<&str> = session
        .verdict()
        .insecurities
        .iter()
        .map(|i| i.label())
        .collect();
    if args.show_verdict && !args.json {
        print!("{}", session.verdict().summary());
        println!();
    }
    let mut turns = Vec::new();
    if let Some(system) = &args.system {
        turns.push(ChatMessage {
            role: Role::System,
            content: system.clone(),
        });
    }
    turns.push(ChatMessage {
        role: Role::User,
        content: args.text.clone(),
    });
    let request = InferenceRequest {
        request_id: 1,
        prompt: Prompt::Chat(turns),
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            seed: args.seed,
            ..SamplingParams::GREEDY
        },
        stream: !args.json,
    };
    if !args.json {
        for insecurity in &session.verdict().insecurities {
            eprintln!(
                "INSECURE: {}; this answer is not fully attested.",
                insecurity.explain()
            );
        }
    }
    let json = args.json;
    let done = session
        .request(&request, |chunk| {
            if !json {
                print!("{}", chunk.text);
                let _ = std::io::stdout().flush();
            }
        })
        .await?;
    session.close().await;
    if json {
        let out = serde_json::json!({
            "insecure": insecure,
            "insecure_reasons": reasons,
            "verdict": session_verdict_json(&endpoint, insecure),
            "text": done.text,
            "token_ids": done.token_ids,
            "usage": { "prompt_tokens": done.usage.prompt_tokens, "completion_tokens": done.usage.completion_tokens },
            "finish_reason": format!("{:?}", done.finish_reason).to_lowercase(),
            "model_root": hex::encode(done.receipt.model_root),
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "[{} prompt + {} completion tokens, receipt verified{}]",
            done.usage.prompt_tokens,
            done.usage.completion_tokens,
            if insecure { "; INSECURE" } else { "" }
        );
    }
    Ok(())
}

fn session_verdict_json(
    endpoint: &chrysalis_client::transport::Endpoint,
    insecure: bool,
) -> serde_json::Value {
    serde_json::json!({ "url": endpoint.url().as_str(), "insecure": insecure })
}
