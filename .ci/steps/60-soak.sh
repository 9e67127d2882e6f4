# A longer soak than the test run's 3 s: 20 s of pool maps and 20 s of queues per start
# method, with random workers, producers and consumers SIGKILLed (tests/soak.c), on the
# build the README's test command made. About 2.5 minutes.
for method in fork spawn forkserver; do
  ./build/tests/soak --seconds 20 --method "$method"
done
