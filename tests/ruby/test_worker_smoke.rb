# frozen_string_literal: true

# The first proof of compatibility: jobs pushed by Ruby Sidekiq's own client are
# processed by tierone-worker, and Sidekiq's own API sees the result.

require_relative "helper"

class TestWorkerSmoke < TieroneTest::Case
  JOBS = 10

  def test_processes_noop_jobs_pushed_by_sidekiq_client
    JOBS.times do |i|
      jid = Sidekiq::Client.push("class" => "Tierone::Noop", "args" => [i], "queue" => "default")
      assert_match(/\A\h{24}\z/, jid)
    end
    assert_equal JOBS, Sidekiq::Queue.new("default").size

    worker = start_worker({ "TIERONE_QUEUES" => "default", "TIERONE_CONCURRENCY" => "5" },
                          ["--diagnostic-jobs"])

    # stat:processed is flushed on the worker's heartbeat (every 5 s), hence the timeout.
    wait_until(30, -> { "#{JOBS} jobs processed and queue:default empty" }) do
      worker.assert_alive!
      Sidekiq::Stats.new.processed >= JOBS && Sidekiq::Queue.new("default").size.zero?
    end

    stats = Sidekiq::Stats.new
    assert_equal JOBS, stats.processed
    assert_equal 0, stats.failed
    assert_equal 0, Sidekiq::RetrySet.new.size
    assert_equal 0, Sidekiq::DeadSet.new.size
    assert_equal 0, worker.stop("TERM", 30), "worker should exit 0 on SIGTERM"
  end
end
