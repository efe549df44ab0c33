package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration that reads and writes JSON as "50ms", so
// `--format json` and `inspect` show what the user typed. It also reads a
// number of nanoseconds.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("duration: %s is neither a string nor a number", b)
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

type qosJSON struct {
	Rate      uint64    `json:"rate,omitempty"`
	Ceiling   uint64    `json:"ceiling,omitempty"`
	Delay     Duration  `json:"delay,omitempty"`
	Jitter    Duration  `json:"jitter,omitempty"`
	Loss      float64   `json:"loss,omitempty"`
	Direction Direction `json:"direction,omitempty"`
}

func (p QoSPolicy) MarshalJSON() ([]byte, error) {
	return json.Marshal(qosJSON{p.Rate, p.Ceiling, Duration(p.Delay), Duration(p.Jitter), p.Loss, p.Direction})
}

func (p *QoSPolicy) UnmarshalJSON(b []byte) error {
	var j qosJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*p = QoSPolicy{j.Rate, j.Ceiling, time.Duration(j.Delay), time.Duration(j.Jitter), j.Loss, j.Direction}
	return nil
}

// serviceJSON shadows Persistence and Drain with their string forms.
type serviceJSON struct {
	plainService
	Persistence Duration `json:"persistence,omitempty"`
	Drain       Duration `json:"drain,omitempty"`
}

type plainService Service

func toServiceJSON(s Service) serviceJSON {
	return serviceJSON{plainService(s), Duration(s.Persistence), Duration(s.Drain)}
}

func (j serviceJSON) service() Service {
	s := Service(j.plainService)
	s.Persistence, s.Drain = time.Duration(j.Persistence), time.Duration(j.Drain)
	return s
}

func (s Service) MarshalJSON() ([]byte, error) { return json.Marshal(toServiceJSON(s)) }

func (s *Service) UnmarshalJSON(b []byte) error {
	var j serviceJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = j.service()
	return nil
}

// serviceStatusJSON is needed because ServiceStatus would otherwise
// inherit Service's MarshalJSON, which knows nothing of the counters.
type serviceStatusJSON struct {
	serviceJSON
	Stats   Counters            `json:"stats"`
	Targets map[string]Counters `json:"targetStats"`
	Active  map[string]uint64   `json:"activeConnections"`
}

func (s ServiceStatus) MarshalJSON() ([]byte, error) {
	return json.Marshal(serviceStatusJSON{toServiceJSON(s.Service), s.Stats, s.Targets, s.Active})
}

func (s *ServiceStatus) UnmarshalJSON(b []byte) error {
	var j serviceStatusJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = ServiceStatus{Service: j.service(), Stats: j.Stats, Targets: j.Targets, Active: j.Active}
	return nil
}
