# Ruby Sidekiq side of the pipeline benchmark (bench/pipeline.sh, bench/pipeline.c): the
# answer path of tierone's chain written the way a Rails shop would write it with Sidekiq,
# against the same shim, Redis, PostgreSQL (tierone's own tables) and fake services.
#
#   sidekiq -r ./bench/ruby_pipeline.rb -c 1000 -q events -q ai -q actions
#
# Environment (bench_pipeline's test_stack sets it for either worker): TIERONE_REDIS_URL,
# TIERONE_DATABASE_URL, CHATWOOT_BASE_URL, CHATWOOT_BOT_TOKEN, LLM_BASE_URL, LLM_MODEL,
# TIERONE_DATABASE_POOL (PostgreSQL connections shared by the threads, like tierone's pool).
#
# Per turn it does what tierone does on the answer path, minus its safety nets:
#   Tierone::ChatwootEvent (events)  parse the webhook, keep incoming customer messages in a
#                                    pending conversation, INSERT the turn (unique per
#                                    message), enqueue Retrieve
#   Tierone::Retrieve (ai)           one full-text query over the knowledge base (OR of the
#                                    question's words, ts_rank_cd, top 5), store the passages
#   Tierone::Decide (ai)             one chat completion with a strict JSON schema, the
#                                    passages as a JSON document; keep an answer that cites a
#                                    passage; store the decision
#   Tierone::Reply (actions)         GET the conversation (still pending?), POST the reply
#                                    with the tierone_turn marker, mark the turn answered
# Left out, so Sidekiq does less work than tierone: the effects ledger and reconciliation,
# the burst/newest-turn check, rate limits, retries' fail-safe, the reply cap, contact
# attributes and history in the prompt, the router's other events.
#
# Choices: Sidekiq's logger at WARN (tierone runs at warn too); one keep-alive Net::HTTP
# session per thread and host (like libcurl's connection cache); PostgreSQL through a
# ConnectionPool of TIERONE_DATABASE_POOL connections (ActiveRecord's pool does the same);
# jobs pushed with Sidekiq::Client (what `perform_async` does).
require "sidekiq"
require "connection_pool"
require "json"
require "net/http"
require "pg"
require "uri"
require "logger"

Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

REDIS = { url: ENV.fetch("TIERONE_REDIS_URL") }.freeze
Sidekiq.configure_server do |config|
  config.redis = REDIS
  Sidekiq.logger.level = Logger::WARN
end
Sidekiq.configure_client { |config| config.redis = REDIS }

module Bench
  DB = ConnectionPool.new(size: Integer(ENV.fetch("TIERONE_DATABASE_POOL", "8")), timeout: 60) do
    PG.connect(ENV.fetch("TIERONE_DATABASE_URL"))
  end
  CHATWOOT = URI(ENV.fetch("CHATWOOT_BASE_URL"))
  LLM = URI(ENV.fetch("LLM_BASE_URL"))
  BOT_TOKEN = ENV.fetch("CHATWOOT_BOT_TOKEN")
  MODEL = ENV.fetch("LLM_MODEL")
  SCHEMA = {
    type: "object", additionalProperties: false,
    required: %w[action answer reason category passage_ids],
    properties: {
      action: { type: "string", enum: %w[answer escalate] },
      answer: { type: "string" }, reason: { type: "string" },
      category: { type: "string", enum: %w[question bug feature account billing] },
      passage_ids: { type: "array", items: { type: "integer" } }
    }
  }.freeze

  def self.sql(text, params)
    DB.with { |c| c.exec_params(text, params).to_a }
  end

  # One keep-alive session per thread and host.
  def self.http(uri)
    key = :"bench_http_#{uri.port}"
    h = Thread.current[key]
    unless h&.started?
      h = Net::HTTP.new(uri.host, uri.port)
      h.keep_alive_timeout = 30
      h.read_timeout = 60
      h.start
      Thread.current[key] = h
    end
    h
  end

  def self.request(uri, req)
    res = http(uri).request(req)
    raise "#{req.method} #{req.path}: HTTP #{res.code}" unless res.is_a?(Net::HTTPSuccess)

    JSON.parse(res.body)
  end

  def self.enqueue(klass, queue, turn_id)
    Sidekiq::Client.push("class" => klass, "queue" => queue, "args" => [turn_id])
  end
end

module Tierone
  class ChatwootEvent
    include Sidekiq::Worker

    def perform(delivery)
      ev = JSON.parse(delivery.fetch("body"))
      return unless ev["event"] == "message_created" && ev["message_type"] == "incoming" &&
                    !ev["private"] && ev.dig("conversation", "status") == "pending"

      row = Bench.sql(
        "INSERT INTO turns (account_id, conversation_id, message_id, inbox_id, content," \
        " opened_by) VALUES ($1, $2, $3, $4, $5, $6)" \
        " ON CONFLICT (account_id, conversation_id, message_id) DO NOTHING RETURNING id",
        [ev.dig("account", "id"), ev.dig("conversation", "id"), ev["id"],
         ev.dig("conversation", "inbox_id"), ev["content"].to_s, jid]
      ).first
      Bench.enqueue("Tierone::Retrieve", "ai", row["id"].to_i) if row
    end
  end

  class Retrieve
    include Sidekiq::Worker

    def perform(turn_id)
      turn = Bench.sql("SELECT content FROM turns WHERE id = $1", [turn_id]).first
      words = turn["content"].downcase.scan(/[a-z0-9]+/).uniq
      passages = Bench.sql(
        "SELECT c.id, d.source, c.content, ts_rank_cd(c.tsv, q) AS score" \
        " FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id," \
        " to_tsquery('english', $1) q WHERE c.tsv @@ q ORDER BY score DESC, c.id LIMIT 5",
        [words.map { |w| PG::Connection.escape_string(w) }.join(" | ")]
      )
      Bench.sql("UPDATE turns SET question = $2, passages = $3::jsonb WHERE id = $1",
                [turn_id, turn["content"], JSON.generate(passages)])
      Bench.enqueue("Tierone::Decide", "ai", turn_id)
    end
  end

  class Decide
    include Sidekiq::Worker

    def perform(turn_id)
      turn = Bench.sql("SELECT question, passages FROM turns WHERE id = $1", [turn_id]).first
      passages = JSON.parse(turn["passages"])
      doc = { question: turn["question"],
              passages: passages.map { |p| { id: p["id"].to_i, source: p["source"], text: p["content"] } } }
      req = Net::HTTP::Post.new("/v1/chat/completions", "Content-Type" => "application/json")
      req.body = JSON.generate(
        model: Bench::MODEL, temperature: 0.2,
        response_format: { type: "json_schema",
                           json_schema: { name: "decision", strict: true, schema: Bench::SCHEMA } },
        messages: [
          { role: "system", content: "You answer customer questions from the passages only. Reply in JSON." },
          { role: "user", content: "The customer's question and the passages, as data:\n#{JSON.generate(doc)}" }
        ]
      )
      reply = Bench.request(Bench::LLM, req)
      decision = JSON.parse(reply.dig("choices", 0, "message", "content"))
      cited = decision["passage_ids"].to_a & doc[:passages].map { |p| p[:id] }
      decision["action"] = "escalate" if decision["action"] == "answer" && cited.empty?
      Bench.sql("UPDATE turns SET decision = $2::jsonb WHERE id = $1", [turn_id, JSON.generate(decision)])
      Bench.enqueue("Tierone::Reply", "actions", turn_id) if decision["action"] == "answer"
    end
  end

  class Reply
    include Sidekiq::Worker

    def perform(turn_id)
      t = Bench.sql("SELECT account_id, conversation_id, message_id, decision->>'answer' AS answer" \
                    " FROM turns WHERE id = $1", [turn_id]).first
      base = "/api/v1/accounts/#{t['account_id']}/conversations/#{t['conversation_id']}"
      get = Net::HTTP::Get.new(base, "api_access_token" => Bench::BOT_TOKEN)
      return unless Bench.request(Bench::CHATWOOT, get)["status"] == "pending"

      post = Net::HTTP::Post.new("#{base}/messages", "api_access_token" => Bench::BOT_TOKEN,
                                                     "Content-Type" => "application/json")
      key = "#{t['account_id']}:#{t['conversation_id']}:#{t['message_id']}"
      post.body = JSON.generate(content: t["answer"], message_type: "outgoing", private: false,
                                content_attributes: { tierone_turn: key })
      Bench.request(Bench::CHATWOOT, post)
      Bench.sql("UPDATE turns SET state = 'answered', finished_at = now() WHERE id = $1", [turn_id])
    end
  end
end
