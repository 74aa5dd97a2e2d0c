# frozen_string_literal: true

# tierone-ingest judged by Ruby Sidekiq 6.4.1: a webhook posted to the real binary (signed
# the way Chatwoot signs, with Ruby's OpenSSL) becomes a job that Sidekiq's API reads back
# field by field, whose body argument is the posted body byte for byte, and that a Ruby
# Sidekiq::Worker class can perform as is.
#
# ctest runs it as `ruby tests/ruby/test_ingest_interop.rb`; by hand:
#   bash scripts/test.sh --services-only -- ruby tests/ruby/test_ingest_interop.rb

require_relative "helper"
require "json"
require "net/http"
require "openssl"

module Tierone
  # What a Ruby deployment would run for the shim's jobs; records what it was given.
  class ChatwootEvent
    include Sidekiq::Worker
    class << self
      attr_accessor :performed
    end

    def perform(event)
      self.class.performed = event
    end
  end
end

class TestIngestInterop < TieroneTest::Case
  INGEST_BIN = File.join(TieroneTest::BIN_DIR, "tierone-ingest")
  SECRET = "interop-secret"
  DB = 3
  # What Rails sends: <, > and & escaped as \u003c..., other text as raw UTF-8.
  BODY = '{"event":"message_created","id":7,"content":"Hi \u003cb\u003e \u0026 café 😀",' \
         '"conversation":{"display_id":12,"status":"pending"},"account":{"id":1}}'

  def setup
    super
    use_redis_db(DB)
    flushdb
    @ingest_pid = nil
  end

  def teardown
    stop_ingest if @ingest_pid
    super
  end

  def start_ingest(env = {})
    assert File.executable?(INGEST_BIN), "#{INGEST_BIN} not built (TIERONE_BIN_DIR)"
    @ingest_log = File.join(TieroneTest.tmpdir, "ingest-#{TieroneTest.next_worker_number}.log")
    full = {
      "TIERONE_REDIS_URL" => redis_url(DB), "TIERONE_LISTEN_HOST" => "127.0.0.1",
      "TIERONE_LISTEN_PORT" => "0", "TIERONE_ADMIN_PORT" => "0",
      "TIERONE_WEBHOOK_SECRETS" => SECRET,
      "TIERONE_SPOOL_PATH" => File.join(TieroneTest.tmpdir, "ingest-#{Process.pid}.spool")
    }.merge(env)
    @ingest_pid = Process.spawn(full, INGEST_BIN, in: File::NULL, out: @ingest_log,
                                                  err: %i[child out])
    @port = wait_until(15, -> { "tierone-ingest to listen:\n#{File.read(@ingest_log)}" }) do
      File.read(@ingest_log)[/accepting webhooks on 127\.0\.0\.1:(\d+)/, 1]&.to_i
    end
  end

  def stop_ingest
    Process.kill("TERM", @ingest_pid)
    _, status = Process.waitpid2(@ingest_pid)
    @ingest_pid = nil
    assert_equal 0, status.exitstatus, "tierone-ingest exit status\n#{File.read(@ingest_log)}"
  end

  def post(path, body, delivery: nil, ts: Time.now.to_i)
    sig = OpenSSL::HMAC.hexdigest("SHA256", SECRET, "#{ts}.#{body}")
    headers = { "Content-Type" => "application/json", "X-Chatwoot-Timestamp" => ts.to_s,
                "X-Chatwoot-Signature" => "sha256=#{sig}" }
    headers["X-Chatwoot-Delivery"] = delivery if delivery
    Net::HTTP.start("127.0.0.1", @port) do |http|
      req = Net::HTTP::Post.new(path, headers)
      req.body = body
      http.request(req)
    end
  end

  def test_sidekiq_api_reads_the_job_and_a_ruby_worker_performs_it
    start_ingest
    ts = Time.now.to_i
    res = post("/webhooks/agent-bot", BODY, delivery: "6f1e2d3c-aaaa-bbbb-cccc-0123456789ab", ts: ts)
    assert_equal "202", res.code, res.body
    jid = JSON.parse(res.body).fetch("jid")

    assert_equal ["events"], Sidekiq::Queue.all.map(&:name)
    queue = Sidekiq::Queue.new("events")
    assert_equal 1, queue.size
    job = queue.first
    assert_equal jid, job.jid
    assert_match(/\A\h{24}\z/, job.jid)
    assert_equal "Tierone::ChatwootEvent", job.klass
    assert_equal true, job["retry"]
    assert_equal "events", job.queue
    assert_in_delta Time.now.to_f, job.enqueued_at.to_f, 60
    assert_in_delta job.enqueued_at.to_f, job.created_at.to_f, 0.001
    assert_operator queue.latency, :<, 60
    assert_equal 1, job.args.size
    event = job.args.first
    assert_equal %w[body delivery timestamp path received_at], event.keys
    assert_equal BODY, event["body"], "the raw body survives byte for byte"
    assert_equal BODY.b, event["body"].b
    assert_includes event["body"], '\u003cb\u003e', "Rails escapes stay as they were sent"
    assert_equal "6f1e2d3c-aaaa-bbbb-cccc-0123456789ab", event["delivery"]
    assert_equal ts, event["timestamp"]
    assert_kind_of Integer, event["timestamp"]
    assert_equal "agent-bot", event["path"]
    assert_kind_of Float, event["received_at"]
    assert_in_delta Time.now.to_f, event["received_at"], 60
    assert_equal "message_created", JSON.parse(event["body"])["event"]
    assert_equal "<b> & café 😀", JSON.parse(event["body"])["content"].delete_prefix("Hi ")
    # Ruby's JSON writes the job back to the same bytes (no float or escape surprises).
    assert_equal job.value, JSON.generate(JSON.parse(job.value))

    # What a Sidekiq processor does with it: constantize the class and perform with args.
    Object.const_get(job.klass).new.perform(*job.args)
    assert_equal BODY, Tierone::ChatwootEvent.performed["body"]
  end

  def test_repeat_delivery_is_queued_once
    start_ingest
    body = '{"event":"conversation_status_changed","id":3}'
    first = post("/webhooks/chatwoot", body, delivery: "dup-ruby")
    again = post("/webhooks/chatwoot", body, delivery: "dup-ruby", ts: Time.now.to_i - 5)
    assert_equal %w[202 202], [first.code, again.code]
    assert_equal "duplicate", JSON.parse(again.body)["status"]
    assert_equal 1, Sidekiq::Queue.new("events").size
    res = post("/webhooks/chatwoot", body, ts: Time.now.to_i - 3600)
    assert_equal "401", res.code
    assert_equal 1, Sidekiq::Queue.new("events").size
  end
end
