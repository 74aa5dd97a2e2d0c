# frozen_string_literal: true

# tierone-worker as one more Sidekiq process, judged by Ruby Sidekiq 6.4.1's own client
# and API (Debian's ruby-sidekiq):
#
#   - jobs pushed with Sidekiq::Client.push / push_bulk / perform_in / "at" run, and
#     Sidekiq::Stats counts them exactly once the worker has stopped;
#   - a failure lands in Sidekiq::RetrySet with Sidekiq's fields; Ruby's SortedEntry#retry
#     and #reschedule send it back and tierone counts the next failure as Ruby would;
#   - retry: 0 goes to Sidekiq::DeadSet; DeadSet#retry_all sends it back, it dies again;
#   - Sidekiq::ProcessSet and Sidekiq::Workers show the process and its running job;
#   - Process#quiet! and #stop! (signals through Redis) quiet and stop it;
#   - a job Ruby scheduled, with unknown keys, big integers and Ruby float timestamps,
#     passes through tierone's poller unchanged, and a real Ruby Sidekiq process runs it.
#
#   bash scripts/test.sh --services-only -- ruby tests/ruby/test_worker_interop.rb

require_relative "helper"
require "json"
require "socket"

# The Ruby-side view of the diagnostic job types, so Sidekiq::Worker's API (perform_in,
# sidekiq_options) can enqueue them. This process never runs them: tierone does.
module Tierone
  class Record
    include Sidekiq::Worker
    sidekiq_options queue: "default"
  end
end

class TestWorkerInterop < TieroneTest::Case
  # Short periods so the tests see beats, polls and signals within a second.
  FAST_ENV = {
    "TIERONE_QUEUES" => "default",
    "TIERONE_CONCURRENCY" => "10",
    "TIERONE_BEAT_INTERVAL" => "200ms",
    "TIERONE_POLL_INTERVAL" => "200ms",
    "TIERONE_RECOVERY_INTERVAL" => "300ms",
    "TIERONE_HEARTBEAT_TTL" => "5",
    "TIERONE_SHUTDOWN_TIMEOUT" => "5s"
  }.freeze

  def start_fast_worker(env = {})
    start_worker(FAST_ENV.merge(env), ["--diagnostic-jobs"])
  end

  def redis(&block)
    Sidekiq.redis(&block)
  end

  def scard(key)
    redis { |c| c.scard(key) }
  end

  def llen(queue)
    redis { |c| c.llen("queue:#{queue}") }
  end

  # The Sidekiq::Process of this worker once its first heartbeat is in Redis.
  def process_of(worker, timeout = 10)
    wait_until(timeout, "tierone pid #{worker.pid} in Sidekiq::ProcessSet") do
      worker.assert_alive!
      Sidekiq::ProcessSet.new.find { |p| p["pid"] == worker.pid }
    end
  end

  # Stops the worker with SIGTERM and asserts a clean exit.
  def stop_clean(worker)
    assert_equal 0, worker.stop("TERM", 30), "worker should exit 0 on SIGTERM\n#{worker.log_tail}"
  end

  def assert_recent_time(time, what)
    assert_kind_of Time, time
    assert_in_delta Time.now.to_f, time.to_f, 60,
                    "#{what} (#{time}) should be within a minute of now"
  end

  # ---- push, stats --------------------------------------------------------------------

  def test_client_push_runs_jobs_and_stats_count_them
    n = 60
    n.times do |i|
      Sidekiq::Client.push("class" => "Tierone::Noop", "args" => [i])
      Sidekiq::Client.push("class" => "Tierone::Record", "args" => ["ran", "r#{i}"])
    end
    assert_equal 2 * n, Sidekiq::Queue.new("default").size

    worker = start_fast_worker
    wait_until(20, -> { "#{n} Record jobs run (ran has #{scard('ran')})" }) do
      worker.assert_alive!
      scard("ran") == n && llen("default").zero?
    end
    stop_clean(worker)

    stats = Sidekiq::Stats.new
    assert_equal 2 * n, stats.processed, "stat:processed after the worker flushed at exit"
    assert_equal 0, stats.failed
    assert_equal 2 * n, Sidekiq::Stats::History.new(1).processed.values.sum,
                 "daily stat:processed:<date>"
    assert_equal 0, stats.enqueued
    assert_equal 0, Sidekiq::RetrySet.new.size
    assert_equal 0, Sidekiq::DeadSet.new.size
    assert_equal 0, Sidekiq::ProcessSet.new.size, "the worker removes itself from processes"
    assert_equal 0, redis { |c| c.keys("tierone:inprogress:*") }.size
  end

  # A clean stop removes everything the process owned: Sidekiq's process entry and work
  # hashes, and our lease, in-progress store and registry membership (ARCHITECTURE.md §3:
  # tierone:processes lists "identities that may own an in-progress store").
  def test_clean_stop_leaves_no_trace_of_the_process
    worker = start_fast_worker
    Sidekiq::Client.push("class" => "Tierone::Record", "args" => %w[ran once])
    wait_until(10, "the job run") { scard("ran") == 1 }
    identity = process_of(worker).identity
    assert redis { |c| c.sismember("tierone:processes", identity) }
    stop_clean(worker)

    leftovers = redis { |c| c.keys("*") }.select do |k|
      k.include?(identity) || (k.start_with?("tierone:") && k != "tierone:recovery:lock")
    end
    %w[tierone:processes processes].each do |set|
      leftovers << "#{set} -> #{identity}" if redis { |c| c.sismember(set, identity) }
    end
    assert_empty leftovers, "keys or set members the stopped worker left behind"
  end

  def test_push_bulk_perform_in_and_at_are_moved_by_the_poller
    now = Time.now.to_f
    bulk = Sidekiq::Client.push_bulk("class" => "Tierone::Record",
                                     "args" => (0...20).map { |i| ["ran", "bulk#{i}"] })
    assert_equal 20, bulk.size
    sched_bulk = Sidekiq::Client.push_bulk("class" => "Tierone::Record",
                                           "args" => (0...5).map { |i| ["ran", "sbulk#{i}"] },
                                           "at" => (0...5).map { |i| now + 0.5 + (i * 0.1) })
    Tierone::Record.perform_in(1, "ran", "perform_in")
    Sidekiq::Client.push("class" => "Tierone::Record", "args" => %w[ran at], "at" => now + 1.0)
    Sidekiq::Client.push("class" => "Tierone::Record", "args" => %w[ran past], "at" => now - 100)
    scheduled = Sidekiq::ScheduledSet.new
    assert_equal 8, scheduled.size
    assert_equal sched_bulk.sort, scheduled.map(&:jid).select { |j| sched_bulk.include?(j) }.sort

    worker = start_fast_worker
    want = (0...20).map { |i| "bulk#{i}" } + (0...5).map { |i| "sbulk#{i}" } +
           %w[perform_in at past]
    wait_until(20, -> { "all jobs run; missing #{want - redis { |c| c.smembers('ran') }}" }) do
      worker.assert_alive!
      scard("ran") == want.size
    end
    assert_equal want.sort, redis { |c| c.smembers("ran") }.sort
    assert_equal 0, Sidekiq::ScheduledSet.new.size
    assert_equal 0, llen("default")
    stop_clean(worker)
    assert_equal want.size, Sidekiq::Stats.new.processed
  end

  # ---- failures -----------------------------------------------------------------------

  def test_failure_in_retry_set_and_ruby_retry_and_reschedule
    jid = Sidekiq::Client.push("class" => "Tierone::Fail", "args" => ["boom from interop"])
    worker = start_fast_worker
    retries = Sidekiq::RetrySet.new
    entry = wait_until(20, "the failure in Sidekiq::RetrySet") { retries.find_job(jid) }
    assert_equal 1, retries.size
    assert_equal "Tierone::Fail", entry.klass
    assert_equal "RuntimeError", entry["error_class"]
    assert_equal "boom from interop", entry["error_message"]
    assert_same 0, entry["retry_count"]
    assert_equal "default", entry.queue
    assert entry.error?
    failed_at = Time.at(entry["failed_at"])
    assert_recent_time(failed_at, "failed_at")
    assert_nil entry["retried_at"]
    delay = entry.at.to_f - entry["failed_at"]
    # Sidekiq: retry_count**4 + 15 + rand(10) * (retry_count + 1) seconds, count 0.
    assert_operator delay, :>=, 14.9, "first retry after at least 15 s"
    assert_operator delay, :<=, 25.1, "first retry within 25 s"
    assert_equal ["boom from interop"], entry.args

    # Ruby's "Retry now": off the set, retry_count - 1, Client.push onto the queue. The
    # worker is stopped meanwhile, or it could fail the job again before the set is read.
    stop_clean(worker)
    entry.retry
    assert_equal 0, retries.size
    assert_equal 1, llen("default"), "Retry now puts the job back on its queue"
    worker = start_fast_worker
    entry = wait_until(20, "the second failure in Sidekiq::RetrySet") do
      e = retries.find_job(jid)
      e if e && e["retried_at"]
    end
    # Sidekiq counts a manual retry's failure like the previous one: -1 + 1 = 0.
    assert_same 0, entry["retry_count"]
    assert_in_delta failed_at.to_f, entry["failed_at"], 0.001, "failed_at kept"
    assert_recent_time(Time.at(entry["retried_at"]), "retried_at")
    assert_operator entry["retried_at"], :>=, entry["failed_at"]

    # SortedEntry#reschedule re-encodes the job with Ruby's JSON and moves that member:
    # the set stays at one member only if tierone's bytes are exactly Ruby's.
    entry.reschedule(Time.now)
    assert_equal 1, retries.size, "reschedule added a member: tierone's retry payload " \
                                  "differs from Ruby's JSON for the same job"
    entry = wait_until(20, "the third failure (retry_count 1) in Sidekiq::RetrySet") do
      e = retries.find_job(jid)
      e if e && e["retry_count"] == 1
    end
    delay = entry.at.to_f - entry["retried_at"]
    # count 1: 1 + 15 + rand(10) * 2
    assert_operator delay, :>=, 15.9
    assert_operator delay, :<=, 34.1
    assert_equal 1, retries.size
    stop_clean(worker)
    stats = Sidekiq::Stats.new
    assert_equal 3, stats.processed
    assert_equal 3, stats.failed
  end

  def test_retry_zero_goes_to_dead_set_and_retry_all_runs_it_again
    jid = Sidekiq::Client.push("class" => "Tierone::Fail", "args" => ["dead on arrival"],
                               "retry" => 0)
    worker = start_fast_worker
    dead = Sidekiq::DeadSet.new
    entry = wait_until(20, "the job in Sidekiq::DeadSet") { dead.find_job(jid) }
    assert_equal 1, dead.size
    assert_equal 0, Sidekiq::RetrySet.new.size
    assert_equal "RuntimeError", entry["error_class"]
    assert_equal "dead on arrival", entry["error_message"]
    assert_same 0, entry["retry_count"]
    assert_same 0, entry["retry"]
    assert_recent_time(Time.at(entry["failed_at"]), "failed_at")
    assert_recent_time(entry.at, "time of death")

    # Stopped while retry_all runs: a running worker could fetch the job and kill it again
    # (a few ms) before the dead set is read back.
    stop_clean(worker)
    dead.retry_all
    assert_equal 0, dead.size
    assert_equal 1, llen("default"), "retry_all puts the job back on its queue"
    worker = start_fast_worker
    entry = wait_until(20, "the job dead again after DeadSet#retry_all") do
      e = dead.find_job(jid)
      e if e && e["retried_at"]
    end
    assert_equal 1, dead.size
    assert_equal "RuntimeError", entry["error_class"]
    assert_same 0, entry["retry_count"]
    assert_equal 0, llen("default")
    stop_clean(worker)
    stats = Sidekiq::Stats.new
    assert_equal 2, stats.processed, "the job ran twice"
    assert_equal 2, stats.failed
  end

  # ---- process set, workers, signals --------------------------------------------------

  def test_process_set_and_workers_show_the_process_and_its_job
    worker = start_fast_worker("TIERONE_QUEUES" => "default,low", "TIERONE_CONCURRENCY" => "7",
                               "TIERONE_TAG" => "interop-tag", "TIERONE_SHUTDOWN_TIMEOUT" => "1s")
    process = process_of(worker)
    hostname = ENV["DYNO"].to_s.empty? ? Socket.gethostname : ENV["DYNO"]
    assert_equal hostname, process["hostname"]
    assert_match(/\A#{Regexp.escape(hostname)}:#{worker.pid}:\h+\z/, process.identity)
    assert_equal worker.pid, process["pid"]
    assert_equal 7, process["concurrency"]
    assert_equal %w[default low], process.queues
    assert_equal "interop-tag", process.tag
    assert_equal "false", process["quiet"]
    refute process.stopping?
    assert_recent_time(Time.at(process["started_at"]), "started_at")
    assert_recent_time(Time.at(process["beat"]), "beat")
    assert_operator process["rss"], :>, 0
    assert_equal 7, Sidekiq::ProcessSet.new.total_concurrency

    jid = Sidekiq::Client.push("class" => "Tierone::Sleep", "args" => [20_000])
    process = wait_until(10, "busy 1 in the process hash") do
      p = Sidekiq::ProcessSet.new.find { |x| x["pid"] == worker.pid }
      p if p && p["busy"] == 1
    end
    assert_equal 1, Sidekiq::Workers.new.size
    works = wait_until(10, "the Sleep job in Sidekiq::Workers") do
      w = Sidekiq::Workers.new.to_a
      w unless w.empty?
    end
    assert_equal 1, works.size
    process_id, thread_id, work = works.first
    assert_equal process.identity, process_id
    refute_empty thread_id.to_s
    assert_equal "default", work["queue"]
    assert_equal jid, work["payload"]["jid"]
    assert_equal "Tierone::Sleep", work["payload"]["class"]
    assert_equal [20_000], work["payload"]["args"]
    assert_recent_time(Time.at(work["run_at"]), "run_at")

    # The job is cut short by the 1 s shutdown timeout and goes back to its queue.
    stop_clean(worker)
    assert_equal 0, Sidekiq::ProcessSet.new.size
    assert_equal 0, Sidekiq::Workers.new.to_a.size
    assert_equal [jid], Sidekiq::Queue.new("default").map(&:jid)
  end

  def test_quiet_and_stop_through_sidekiq_api
    worker = start_fast_worker
    Sidekiq::Client.push("class" => "Tierone::Record", "args" => %w[ran before-quiet])
    wait_until(10, "a job run before quiet") { scard("ran") == 1 }
    process = process_of(worker)

    process.quiet!
    wait_until(10, "quiet true in the process hash") do
      worker.assert_alive!
      p = Sidekiq::ProcessSet.new.find { |x| x["pid"] == worker.pid }
      p&.stopping?
    end
    jid = Sidekiq::Client.push("class" => "Tierone::Record", "args" => %w[ran after-quiet])
    # An absence: observe for 10 beats that the quiet worker leaves the job alone.
    deadline = TieroneTest.now + 2.0
    while TieroneTest.now < deadline
      worker.assert_alive!
      assert_equal 1, llen("default"), "a quiet worker fetched a job"
      sleep 0.05
    end
    assert_equal 1, scard("ran")

    process.stop!
    wait_until(10, "the worker to exit after Process#stop!") { !worker.alive? }
    assert_equal 0, worker.exit_code, worker.log_tail
    assert_equal 0, Sidekiq::ProcessSet.new.size
    assert_equal [jid], Sidekiq::Queue.new("default").map(&:jid)
    assert_equal 1, Sidekiq::Stats.new.processed
  end

  # ---- a Ruby job through tierone's poller, run by Ruby -------------------------------

  RUBY_JOB_FILE = <<~RUBY
    # frozen_string_literal: true
    require "sidekiq"
    # Runs in a real Ruby Sidekiq process: records the job hash it got and its args.
    class InteropRubyJob
      include Sidekiq::Worker
      def perform(*args)
        Sidekiq.redis { |c| c.sadd("ruby_ran", Sidekiq.dump_json([jid, args])) }
      end
    end
    class InteropRecordMiddleware
      def call(_worker, job, _queue)
        Sidekiq.redis { |c| c.rpush("ruby_jobs", Sidekiq.dump_json(job)) }
        yield
      end
    end
    Sidekiq.configure_server do |config|
      config.server_middleware { |chain| chain.add InteropRecordMiddleware }
    end
  RUBY

  def start_ruby_sidekiq(dir)
    file = File.join(dir, "interop_ruby_job.rb")
    File.write(file, RUBY_JOB_FILE)
    log = File.join(dir, "sidekiq.log")
    pid = Process.spawn({ "REDIS_URL" => redis_url, "RAILS_ENV" => nil, "RACK_ENV" => nil },
                        "sidekiq", "-r", file, "-q", "rubyonly", "-c", "2", "-t", "5",
                        in: File::NULL, out: log, err: %i[child out], chdir: dir)
    [pid, log]
  end

  # TERM, then up to 20 s for a clean exit. Returns its Process::Status (nil if it was
  # already reaped).
  def stop_ruby_sidekiq(pid, log)
    begin
      Process.kill("TERM", pid)
    rescue Errno::ESRCH
      nil
    end
    deadline = TieroneTest.now + 20
    loop do
      begin
        done = Process.waitpid(pid, Process::WNOHANG)
      rescue Errno::ECHILD
        return nil
      end
      return $? if done

      if TieroneTest.now > deadline
        Process.kill("KILL", pid)
        Process.waitpid(pid)
        flunk "ruby sidekiq did not stop on TERM:\n#{File.read(log)}"
      end
      sleep 0.05
    end
  end

  def test_ruby_scheduled_job_survives_the_poller_and_ruby_runs_it
    big = 123_456_789_012_345_678_901_234_567_890
    args = [big, 2**64, -(2**63) - 1, 1.1, 0.1 + 0.2, 1e-7, "caf\u00e9 \u{1F600} \"q\" \\",
            { "nested" => [1, nil, true, { "x" => 3.0 }] }]
    at = Time.now.to_f + 0.3
    jid = Sidekiq::Client.push("class" => "InteropRubyJob", "queue" => "rubyonly", "args" => args,
                               "at" => at, "custom_key" => { "keep" => [1, 2] },
                               "ruby_ts" => Time.now.to_f, "huge_top" => 2**70,
                               "retry" => 3, "tags" => ["interop"])
    scheduled = Sidekiq::ScheduledSet.new.find_job(jid)
    refute_nil scheduled
    original = scheduled.value
    refute_includes original, "enqueued_at"

    worker = start_fast_worker
    queue = Sidekiq::Queue.new("rubyonly")
    wait_until(20, "the scheduled job moved to queue:rubyonly by tierone's poller") do
      worker.assert_alive!
      queue.size == 1
    end
    assert_equal 0, Sidekiq::ScheduledSet.new.size
    assert_includes redis { |c| c.smembers("queues") }, "rubyonly"
    job = queue.first
    queued = job.value
    # Byte fidelity: only enqueued_at was added.
    assert_equal original, queued.sub(/,"enqueued_at":[0-9.]+/, ""),
                 "the poller changed more than enqueued_at"
    parsed_original = JSON.parse(original)
    parsed = JSON.parse(queued)
    assert_equal parsed_original, parsed.reject { |k, _| k == "enqueued_at" }
    assert_kind_of Float, parsed["enqueued_at"]
    assert_operator parsed["enqueued_at"], :>=, at - 0.001
    assert_equal args, job.args
    assert_equal big, job.args[0]
    assert_equal({ "keep" => [1, 2] }, job["custom_key"])
    assert_equal 2**70, job["huge_top"]
    assert_equal parsed_original["created_at"], job["created_at"]
    assert_equal parsed_original["ruby_ts"], job["ruby_ts"]
    assert_equal jid, job.jid
    # tierone does not fetch rubyonly.
    assert_equal 0, Sidekiq::Stats.new.processed
    assert worker.alive?
    stop_clean(worker)

    Dir.mktmpdir("tierone-ruby-sidekiq-") do |dir|
      pid, log = start_ruby_sidekiq(dir)
      begin
        ran = wait_until(30, -> { "Ruby Sidekiq to run the job\n#{File.read(log)}" }) do
          refute Process.waitpid(pid, Process::WNOHANG), "sidekiq exited:\n#{File.read(log)}"
          members = redis { |c| c.smembers("ruby_ran") }
          members.empty? ? nil : members
        end
      ensure
        status = stop_ruby_sidekiq(pid, log)
      end
      assert status.success?, "ruby sidekiq exit status #{status.inspect}:\n#{File.read(log)}"
      assert_equal 1, ran.size
      ran_jid, ran_args = JSON.parse(ran.first)
      assert_equal jid, ran_jid
      assert_equal args, ran_args
      seen = JSON.parse(redis { |c| c.lrange("ruby_jobs", 0, -1) }.first)
      assert_equal parsed, seen, "the job hash Ruby's processor got"
    end
    assert_equal 0, queue.size
    assert_equal 0, Sidekiq::RetrySet.new.size
    assert_equal 0, Sidekiq::DeadSet.new.size
  end
end
