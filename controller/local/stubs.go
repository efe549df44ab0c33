package local

import (
	"context"
	"errors"

	"github.com/circuit-cni/circuit/controller"
)

var errTODO = errors.New("not implemented yet")

func (c *Controller) CreateService(ctx context.Context, svc controller.Service) (*controller.Service, error) {
	return nil, errTODO
}
func (c *Controller) AddTargets(ctx context.Context, service string, targets []controller.Target) error {
	return errTODO
}
func (c *Controller) RemoveTargets(ctx context.Context, service string, targets []string) error {
	return errTODO
}
func (c *Controller) DeleteService(ctx context.Context, service string) error { return errTODO }
func (c *Controller) ListServices(ctx context.Context) ([]controller.Service, error) {
	return nil, errTODO
}
func (c *Controller) ShowService(ctx context.Context, service string) (*controller.ServiceStatus, error) {
	return nil, errTODO
}
func (c *Controller) restoreServices(ctx context.Context) ([]string, error) { return nil, nil }
