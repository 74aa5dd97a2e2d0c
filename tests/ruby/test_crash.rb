# frozen_string_literal: true

# Crash safety (ARCHITECTURE.md §5): under load, tierone-worker is killed with SIGKILL five
# times at random points; every job pushed still runs at least once and none is lost.
#
# 3,000 Tierone::Record jobs ("ran", id) are mixed with Tierone::Sleep [200] jobs that keep
# slots busy, so each kill leaves jobs in the dead process's in-progress store. Each round
# starts a worker (concurrency 50, lease 1 s, recovery every 300 ms), waits until it has
# made a random amount of progress (SCARD ran grows), and kills it -9. A last worker then
# recovers what the killed ones held and finishes the queue.
#
# At the end: every id is in `ran`, or (a job that was in flight at three kills) in the dead
# set as a Tierone::PoisonPill; queue:default is empty; no in-progress store is left; the
# dead set holds nothing else; no job waits in retry; the killed processes have left
# tierone:processes. Duplicate executions are allowed (at least once) and reported.
#
# Poison pills do happen here, by design: recovered jobs go back to the head of the queue,
# so the next worker runs them first, and a Sleep among them is often still running when
# that worker is killed too. Three such kills make it a poison pill (max_recoveries 3).
#
#   bash scripts/test.sh --services-only -- ruby tests/ruby/test_crash.rb
#   CRASH_SEED=1234 ...    replay the same kill points

require_relative "helper"
require "json"

class TestCrash < TieroneTest::Case
  RECORDS = 3000
  # One Sleep [SLEEP_MS] per Record, in chunks of 20: the sleeps hold the 50 slots, so a
  # worker runs a few hundred jobs a second and each kill catches ~50 in flight.
  CHUNK = 20
  SLEEP_MS = 200
  KILLS = 5

  CRASH_ENV = {
    "TIERONE_QUEUES" => "default",
    "TIERONE_CONCURRENCY" => "50",
    "TIERONE_HEARTBEAT_TTL" => "1",
    "TIERONE_RECOVERY_INTERVAL" => "300ms",
    "TIERONE_BEAT_INTERVAL" => "200ms",
    "TIERONE_POLL_INTERVAL" => "200ms",
    "TIERONE_SHUTDOWN_TIMEOUT" => "10s"
  }.freeze

  def redis(&block)
    Sidekiq.redis(&block)
  end

  def ran_count
    redis { |c| c.scard("ran") }
  end

  # Jobs held right now by in-progress stores (live or dead processes).
  def in_flight
    redis do |c|
      c.keys("tierone:inprogress:*").sum { |k| c.hlen(k) }
    end
  end

  # The identity a worker logged at start.
  def identity_of(worker)
    id = worker.log[/starting as (\S+):/, 1]
    refute_nil id, "no identity in #{worker.log_path}"
    id
  end

  def push_load
    sleeps = 0
    (0...RECORDS).each_slice(CHUNK) do |ids|
      Sidekiq::Client.push_bulk("class" => "Tierone::Record", "args" => ids.map { |i| ["ran", i] })
      Sidekiq::Client.push_bulk("class" => "Tierone::Sleep",
                                "args" => Array.new(CHUNK) { [SLEEP_MS] })
      sleeps += CHUNK
    end
    sleeps
  end

  def test_kill_9_under_load_loses_no_job
    seed = Integer(ENV.fetch("CRASH_SEED", Random.new_seed % 1_000_000))
    rng = Random.new(seed)
    sleeps = push_load
    total = RECORDS + sleeps
    assert_equal total, Sidekiq::Queue.new("default").size

    held_at_kills = []
    killed = []
    KILLS.times do |round|
      before = ran_count
      worker = start_worker(CRASH_ENV, ["--diagnostic-jobs"])
      # Half the time, let this worker first recover the last one's jobs (its lease is 1 s;
      # recovery drops it from tierone:processes once its store is empty), so recovered
      # jobs run again here and may be caught by the next kill too.
      if round.positive? && rng.rand < 0.5
        last = identity_of(killed.last)
        wait_until(10, -> { "round #{round}: recovery of #{last} (seed #{seed})" }) do
          worker.assert_alive!
          !redis { |c| c.sismember("tierone:processes", last) }
        end
      end
      # Progress, then a kill at a random point.
      want = before + rng.rand(50..250)
      wait_until(30, -> { "round #{round}: ran to reach #{want} (seed #{seed})" }) do
        worker.assert_alive!
        ran_count >= want
      end
      assert_equal 137, worker.kill9
      killed << worker
      held_at_kills << in_flight
    end
    after_kills = ran_count
    assert_operator after_kills, :<, RECORDS,
                    "the kills came too late to test anything (seed #{seed})"
    assert_operator held_at_kills.sum, :>, 0,
                    "no kill left a job in an in-progress store (seed #{seed})"

    final = start_worker(CRASH_ENV, ["--diagnostic-jobs"])
    progress = lambda do
      "all jobs run or dead: ran #{ran_count}, queue #{Sidekiq::Queue.new('default').size}, " \
        "in flight #{in_flight} (seed #{seed})"
    end
    wait_until(45, progress) do
      final.assert_alive!
      poisoned = Sidekiq::DeadSet.new.count { |e| e.klass == "Tierone::Record" }
      ran_count + poisoned >= RECORDS && Sidekiq::Queue.new("default").size.zero? &&
        in_flight.zero?
    end
    assert_equal 0, final.stop("TERM", 30), final.log_tail

    ran = redis { |c| c.smembers("ran") }.map(&:to_i)
    dead = Sidekiq::DeadSet.new.to_a
    dead.each do |e|
      assert_equal "Tierone::PoisonPill", e["error_class"],
                   "only poison pills may be dead: #{e.value[0, 300]} (seed #{seed})"
    end
    dead_ids = dead.select { |e| e.klass == "Tierone::Record" }.map { |e| e.args[1] }
    missing = (0...RECORDS).to_a - ran - dead_ids
    assert_empty missing, "jobs lost after #{KILLS} kill -9 (seed #{seed})"
    assert_equal RECORDS, (ran | dead_ids).size
    assert_equal 0, Sidekiq::Queue.new("default").size
    assert_equal [], redis { |c| c.keys("tierone:inprogress:*") }
    assert_equal 0, Sidekiq::RetrySet.new.size
    # Crashed processes stay in Sidekiq's `processes` until their hash expires (60 s), but
    # recovery has emptied their stores and dropped them from our registry.
    killed_ids = killed.map { |w| identity_of(w) }
    assert_equal KILLS, killed_ids.compact.size
    assert_empty redis { |c| c.smembers("tierone:processes") } & killed_ids

    recovered = TieroneTest.started.sum do |w|
      w.log.scan(/recovered (\d+) job\(s\) from crashed processes/).sum { |m| m[0].to_i }
    end
    puts "\ntest_crash: seed #{seed}; #{total} jobs (#{RECORDS} Record, #{sleeps} Sleep); " \
         "#{KILLS} kills with #{held_at_kills.inspect} job(s) in in-progress stores; " \
         "#{after_kills} Record ids done before the last worker; #{recovered} job(s) " \
         "recovered (an upper bound on duplicate runs); #{dead.size} poison pill(s); " \
         "stat:processed #{Sidekiq::Stats.new.processed} (stats of killed processes since " \
         "their last beat are lost)"
  end
end
