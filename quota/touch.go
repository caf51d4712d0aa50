package quota

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// recordUse notes a token's use; the times are written in batches, at most
// about once a minute per token.
func (s *Service) recordUse(hash string, now time.Time) {
	s.touchMu.Lock()
	if last, ok := s.touchLast[hash]; !ok || now.Sub(last) >= time.Minute {
		s.touchLast[hash] = now
		s.touchPending[hash] = now.UTC().Truncate(time.Millisecond)
	}
	s.touchMu.Unlock()
}

func (s *Service) touchLoop() {
	defer close(s.done)
	tick := time.NewTicker(s.touchEvery)
	defer tick.Stop()
	for {
		select {
		case now := <-tick.C:
			s.flushTouches()
			s.sweepPrincipals(now)
		case <-s.stop:
			s.flushTouches()
			return
		}
	}
}

func (s *Service) flushTouches() {
	now := s.clock.Now()
	s.touchMu.Lock()
	pending := s.touchPending
	s.touchPending = map[string]time.Time{}
	for h, last := range s.touchLast {
		if now.Sub(last) >= time.Minute {
			delete(s.touchLast, h)
		}
	}
	s.touchMu.Unlock()
	if len(pending) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.store.TouchTokens(ctx, pending); err != nil {
		s.log.Warn("recording token last-used times", zap.Int("tokens", len(pending)), zap.Error(err))
	}
}
