# frozen_string_literal: true

# The operator CLI (`tierone stats|queues|dead|retries|scheduled|retry|kill|quiet|stop`)
# judged by Ruby Sidekiq 6.4.1's own API: the numbers it prints are Sidekiq::Stats', and
# each action leaves Redis the way the equivalent Web UI button (SortedEntry#retry, #kill,
# Process#quiet!, #stop!) leaves it.
#
#   bash scripts/test.sh --services-only -- ruby tests/ruby/test_cli_interop.rb

require_relative "helper"
require "json"
require "open3"

class TestCliInterop < TieroneTest::Case
  CLI_BIN = File.join(TieroneTest::BIN_DIR, "tierone")

  def setup
    super
    use_redis_db(6)
    flushdb
  end

  # Runs `tierone ARGS --redis-url URL`; returns [stdout, stderr, exit code].
  def cli(*args)
    out, err, st = Open3.capture3(CLI_BIN, *args, "--redis-url", redis_url)
    [out, err, st.exitstatus]
  end

  def cli_json(*args)
    out, err, code = cli(*args, "--json")
    assert_equal 0, code, "tierone #{args.join(' ')} failed: #{err}"
    JSON.parse(out)
  end

  def failed_job(jid, klass: "Tierone::Decide", retry_count: 3)
    { "class" => klass, "args" => [1, "two"], "queue" => "ai", "retry" => true, "jid" => jid,
      "created_at" => 1_712_345_678.25, "enqueued_at" => 1_712_345_679.5,
      "error_message" => "HTTP 503", "error_class" => "Tierone::LLM::ServerError",
      "failed_at" => 1_712_345_680.0, "retry_count" => retry_count, "custom_key" => { "x" => 1 } }
  end

  def test_stats_and_queues_match_sidekiq_stats
    Sidekiq::Client.push("class" => "A", "queue" => "events", "args" => [])
    Sidekiq::Client.push("class" => "A", "queue" => "events", "args" => [])
    Sidekiq::Client.push("class" => "A", "queue" => "default", "args" => [])
    Sidekiq::Client.push("class" => "A", "args" => [], "at" => Time.now.to_f + 3600)
    Sidekiq::DeadSet.new.kill(JSON.generate(failed_job("d1")), notify_failure: false)
    Sidekiq.redis { |c| c.mset("stat:processed", "42", "stat:failed", "7") }

    stats = cli_json("stats")
    ruby = Sidekiq::Stats.new
    assert_equal ruby.processed, stats["processed"]
    assert_equal ruby.failed, stats["failed"]
    assert_equal ruby.enqueued, stats["enqueued"]
    assert_equal ruby.scheduled_size, stats["scheduled"]
    assert_equal ruby.retry_size, stats["retries"]
    assert_equal ruby.dead_size, stats["dead"]
    assert_equal ruby.processes_size, stats["processes"]
    assert_in_delta ruby.default_queue_latency, stats["default_queue_latency"], 2.0

    queues = cli_json("queues")
    assert_equal Sidekiq::Queue.all.map(&:name).sort, queues.map { |q| q["name"] }
    queues.each { |q| assert_equal Sidekiq::Queue.new(q["name"]).size, q["size"] }
  end

  def test_dead_lists_and_retry_now_matches_sorted_entry_retry
    Sidekiq::DeadSet.new.kill(JSON.generate(failed_job("ours")), notify_failure: false)
    Sidekiq::DeadSet.new.kill(JSON.generate(failed_job("twin")), notify_failure: false)
    Sidekiq::DeadSet.new.kill(JSON.generate(failed_job("other", klass: "Tierone::Reply")),
                              notify_failure: false)
    dead = cli_json("dead", "--class", "Tierone::Decide")
    assert_equal %w[ours twin].sort, dead.map { |e| e["jid"] }.sort
    assert_equal "Tierone::LLM::ServerError", dead.first["error_class"]
    assert_equal 1, cli_json("dead", "--limit", "1").size

    # Ruby retries the twin, tierone retries ours: both land on queue:ai the same way.
    Sidekiq::DeadSet.new.find_job("twin").retry
    cli_json("retry", "ours")
    assert_equal 1, Sidekiq::DeadSet.new.size
    jobs = Sidekiq::Queue.new("ai").map(&:item)
    ours = jobs.find { |j| j["jid"] == "ours" }
    twin = jobs.find { |j| j["jid"] == "twin" }
    refute_nil ours, "retried job not on queue:ai"
    assert_equal 2, ours["retry_count"], "SortedEntry#retry decrements retry_count"
    assert_in_delta Time.now.to_f, ours["enqueued_at"], 30
    strip = ->(j) { j.reject { |k, _| %w[jid enqueued_at].include?(k) } }
    assert_equal strip.call(twin), strip.call(ours)
    assert Sidekiq.redis { |c| c.sismember("queues", "ai") }

    _, err, code = cli("retry", "nobody")
    assert_equal 1, code
    assert_match(/not found/, err)
  end

  def test_retry_all_dead_and_kill_from_retries
    3.times { |i| Sidekiq::DeadSet.new.kill(JSON.generate(failed_job("d#{i}")), notify_failure: false) }
    res = cli_json("retry", "--all-dead")
    assert_equal 3, res["count"]
    assert_equal 0, Sidekiq::DeadSet.new.size
    assert_equal 3, Sidekiq::Queue.new("ai").size

    raw = JSON.generate(failed_job("r1"))
    Sidekiq.redis { |c| c.zadd("retry", Time.now.to_f + 600, raw) }
    assert_equal "r1", cli_json("retries").first["jid"]
    cli_json("kill", "r1")
    assert_equal 0, Sidekiq::RetrySet.new.size
    entry = Sidekiq::DeadSet.new.first
    assert_equal raw, entry.value, "kill moves the job unchanged"
    assert_in_delta Time.now.to_f, entry.score, 30
  end

  def test_quiet_and_stop_reach_a_running_worker
    worker = start_worker({ "TIERONE_QUEUES" => "default", "TIERONE_BEAT_INTERVAL" => "200ms" })
    identity = wait_until(20, "worker registered") { Sidekiq::ProcessSet.new.first&.identity }
    stats = cli_json("stats")
    assert_equal identity, stats["process_list"].first["identity"]
    cli_json("quiet", identity)
    wait_until(20, "worker quiet") { Sidekiq::ProcessSet.new.first&.stopping? }
    cli_json("stop", identity)
    wait_until(30, "worker exited") { !worker.alive? }
    assert_equal 0, worker.exit_code
    _, _, code = cli("quiet", "no-such-process")
    assert_equal 1, code
  end
end
