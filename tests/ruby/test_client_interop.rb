# frozen_string_literal: true

# The C Sidekiq client and job rewriting (lib/sidekiq_client.c, lib/job.c) judged by Ruby
# Sidekiq 6.4.1 itself.
#
# The C side runs as the `peer` suite of the Criterion binary test_sidekiq_client (in
# TIERONE_BIN_DIR): TIERONE_PEER_ACTION=push makes it push jobs with the blocking C client,
# TIERONE_PEER_ACTION=parse makes it read queue:peer with job_parse and print what it makes
# of each job, including the retry payload job_failed_payload writes. Those tests skip
# themselves when the variable is not set, so a plain ctest run does not push anything.
#
#   - C pushes; Sidekiq::Queue / ScheduledSet / JobRecord read every field back.
#   - Sidekiq::Client pushes; C parses each job as Ruby reads it.
#   - Sidekiq::JobRetry fails each job for real; the payload C writes for the same failure
#     is byte-identical to Ruby's (failure times aside), for the first and second failure,
#     including which jobs Ruby retries, kills, or drops.

require_relative "helper"
require "json"
require "open3"
require "sidekiq/job_retry"

class TestClientInterop < TieroneTest::Case
  PEER_BIN = File.join(TieroneTest::BIN_DIR, "test_sidekiq_client")
  NOW = 1_712_350_000.5

  # Runs the C peer with `action` against the database in use; returns its JSON output.
  def run_peer(action, env = {})
    unless File.executable?(PEER_BIN)
      raise Minitest::Assertion, "#{PEER_BIN} not found (TIERONE_BIN_DIR); build it first"
    end

    Dir.mktmpdir("tierone-peer-") do |dir|
      out = File.join(dir, "out.json")
      full_env = { "TIERONE_TEST_REDIS_URL" => redis_url, "TIERONE_PEER_ACTION" => action,
                   "TIERONE_PEER_OUT" => out }.merge(env)
      log, status = Open3.capture2e(full_env, PEER_BIN, "--filter", "peer/#{action}", "--jobs", "1")
      assert status.success?, "C peer #{action} failed:\n#{log}"
      assert File.exist?(out), "C peer #{action} wrote nothing:\n#{log}"
      JSON.parse(File.read(out))
    end
  end

  # A payload with its failure times set to 0, for byte comparison.
  def without_failure_times(payload)
    payload.gsub(/"(failed_at|retried_at)":[-0-9.eE+]+/, '"\1":0')
  end

  def test_sidekiq_api_reads_jobs_pushed_by_c
    jids = run_peer("push")
    assert_equal %w[actions bulk events], Sidekiq::Queue.all.map(&:name).sort

    events = Sidekiq::Queue.new("events")
    assert_equal 1, events.size
    job = events.first
    assert_equal jids["one"], job.jid
    assert_match(/\A\h{24}\z/, job.jid)
    assert_equal "Tierone::ChatwootEvent", job.klass
    assert_equal [{ "event" => "message_created", "id" => 42 }, "café",
                  123_456_789_012_345_678_901_234_567_890, 1500.0], job.args
    assert_equal ["chatwoot"], job.tags
    assert_equal "low", job["retry_queue"]
    assert_equal true, job["retry"]
    assert_in_delta Time.now.to_f, job.enqueued_at.to_f, 60
    assert_in_delta job.enqueued_at.to_f, job.created_at.to_f, 0.001
    assert_operator events.latency, :>=, 0
    assert_operator events.latency, :<, 60
    assert_equal job.jid, events.find_job(jids["one"]).jid

    # retry 0 stays an Integer (dead at the first failure), and a job C wrote for Ruby's
    # shape re-encodes to the same bytes through Ruby's JSON.
    actions = Sidekiq::Queue.new("actions").first
    assert_same 0, actions["retry"]
    assert_equal actions.value, JSON.generate(JSON.parse(actions.value))
    assert_kind_of Float, JSON.parse(actions.value)["enqueued_at"]

    bulk = Sidekiq::Queue.new("bulk")
    assert_equal jids["bulk"].reverse, bulk.map(&:jid)
    assert_equal [[3], [2], [1]], bulk.map(&:args)
    assert_equal 1, bulk.map { |j| j["created_at"] }.uniq.size

    scheduled = Sidekiq::ScheduledSet.new
    assert_equal 1, scheduled.size
    entry = scheduled.first
    assert_equal jids["at"], entry.jid
    assert_in_delta jids["at_time"], entry.at.to_f, 0.001
    assert_equal false, entry["retry"]
    assert_equal "ai", entry.queue
    refute entry.item.key?("enqueued_at")
    refute entry.item.key?("at")
    assert_equal 5, Sidekiq::Stats.new.enqueued # events 1 + actions 1 + bulk 3
  end

  # Jobs as Sidekiq::Client writes them, plus an 8.x-style one written by hand.
  def push_peer_jobs
    big = 123_456_789_012_345_678_901_234_567_890
    c = Sidekiq::Client
    c.push("class" => "A", "queue" => "peer", "args" => [1, "two", { "three" => 3 }, big, 1.5])
    c.push("class" => "B", "queue" => "peer", "args" => ["héllo ✓"], "retry" => false,
           "tags" => ["x"])
    c.push("class" => "C", "queue" => "peer", "args" => [], "retry" => 0)
    c.push("class" => "D", "queue" => "peer", "args" => [nil, true], "retry" => 5,
           "retry_queue" => "low")
    c.push("class" => "E", "queue" => "peer", "args" => [], "retry" => 0, "dead" => false)
    raw = '{"class":"Raw","args":[],"queue":"peer","retry":"5","jid":"0123456789abcdef01234567",' \
          '"created_at":1712345678123,"enqueued_at":"1712345678.5"}'
    Sidekiq.redis { |r| r.lpush("queue:peer", raw) }
  end

  def test_c_parses_jobs_pushed_by_sidekiq_client
    push_peer_jobs
    raws = Sidekiq.redis { |r| r.lrange("queue:peer", 0, -1) }
    seen = run_peer("parse", "TIERONE_PEER_NOW" => NOW.to_s)
    assert_equal raws.size, seen.size

    raws.zip(seen).each do |raw, c|
      msg = JSON.parse(raw)
      assert c["ok"], "C rejected #{raw}: #{c['error']}"
      assert_equal raw, c["raw"]
      assert_equal msg["jid"], c["jid"]
      assert_equal msg["class"], c["class"]
      assert_equal msg["queue"], c["queue"]
      if msg["retry_queue"].nil?
        assert_nil c["retry_queue"]
      else
        assert_equal msg["retry_queue"], c["retry_queue"]
      end
      expected_mode = case msg["retry"]
                      when Integer then "max"
                      when false then "discard"
                      else "default"
                      end
      assert_equal expected_mode, c["retry_mode"], raw
      assert_equal msg["retry"], c["retry_max"] if expected_mode == "max"
      assert_equal msg["dead"] != false, c["dead"]
      assert_in_delta Float(msg["enqueued_at"]) / (Float(msg["enqueued_at"]) >= 1e11 ? 1000 : 1),
                      c["enqueued_at"], 0.001
      args = msg["args"]
      args = args.map { |a| a.is_a?(Integer) ? a.to_f : a } if args.any? { |a| a.is_a?(Integer) && a.bit_length > 63 }
      assert_equal args, c["args"], raw
      assert_equal "peer", c["enqueue_queue"]
      enq = JSON.parse(c["enqueue"])
      # A job keeps the unit of its own created_at: Sidekiq 8's integer milliseconds stay
      # milliseconds, whatever the configured format.
      ms_job = msg["created_at"].is_a?(Integer) && msg["created_at"] >= 1e11
      assert_equal msg.merge("enqueued_at" => ms_job ? (NOW * 1000).round : NOW), enq
    end
  end

  # Fails `raw` with Ruby's own retry handler; returns [set, payload] where set is
  # :retry, :dead or nil (dropped).
  def ruby_failure(raw, message)
    jid = JSON.parse(raw)["jid"]
    Sidekiq::RetrySet.new.clear
    Sidekiq::DeadSet.new.clear
    begin
      Sidekiq::JobRetry.new.global(raw, "peer") { raise RuntimeError, message }
    rescue Sidekiq::JobRetry::Handled
      nil
    end
    found = Sidekiq::RetrySet.new.find_job(jid)
    return [:retry, found.value] if found

    found = Sidekiq::DeadSet.new.find_job(jid)
    return [:dead, found.value] if found

    [nil, nil]
  end

  def compare_failures(message)
    raws = Sidekiq.redis { |r| r.lrange("queue:peer", 0, -1) }
    seen = run_peer("parse", "TIERONE_PEER_NOW" => NOW.to_s, "TIERONE_PEER_MESSAGE" => message)
    retried = []
    raws.zip(seen).each do |raw, c|
      set, ruby_payload = ruby_failure(raw, message.dup)
      case set
      when :retry
        assert c["may_retry"], "Ruby retries #{raw}, C would not"
        retried << ruby_payload
      when :dead
        refute c["may_retry"], "Ruby kills #{raw}, C would retry"
        assert c["dead"]
      else
        refute c["may_retry"], "Ruby drops #{raw}, C would retry"
        assert(c["retry_mode"] == "discard" || !c["dead"], "Ruby drops #{raw}")
        next
      end
      assert_equal without_failure_times(ruby_payload), without_failure_times(c["failed"]),
                   "failure payload of #{raw}"
      assert_equal JSON.parse(ruby_payload)["retry_count"], c["new_count"]
    end
    retried
  end

  def test_failure_payloads_match_sidekiq_job_retry
    push_peer_jobs
    # first failure, with an invalid UTF-8 byte in the message (scrubbed by both)
    retried = compare_failures("boom \xFF \"quoted\"\n".b)
    assert_equal %w[A D Raw], retried.map { |p| JSON.parse(p)["class"] }.sort

    # second failure of what Ruby put in the retry set
    Sidekiq.redis do |r|
      r.del("queue:peer")
      retried.each { |p| r.lpush("queue:peer", p) }
    end
    again = compare_failures("second")
    assert_equal 3, again.size
    again.each do |p|
      msg = JSON.parse(p)
      assert_equal 1, msg["retry_count"]
      assert msg.key?("retried_at")
      assert_equal(msg["class"] == "D" ? "low" : "peer", msg["queue"])
    end
  end
end
