//! The Auth service's paths (etcd's `Auth` bindings): `auth/enable`, `auth/disable`,
//! `auth/authenticate`, `auth/user/{add,get,list,delete,changepw,grant,revoke}`,
//! `auth/role/{add,get,list,delete,grant,revoke}`, and etcd 3.5's `auth/status`. Each is one
//! call of the gRPC Auth service; the token `auth/authenticate` answers goes in the
//! `Authorization` header of later requests, as etcd's gateway reads it.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::etcdserverpb::auth_server::Auth;

use super::{post, Shared};

/// A handler of one path: the gRPC method it calls, and the service's method.
macro_rules! auth_route {
    ($name:ident, $method:literal, $call:ident) => {
        async fn $name(State(g): State<Shared>, request: Request) -> Response {
            g.unary(concat!("/etcdserverpb.Auth/", $method), request, |r| {
                g.auth.$call(r)
            })
            .await
        }
    };
}

auth_route!(enable, "AuthEnable", auth_enable);
auth_route!(disable, "AuthDisable", auth_disable);
auth_route!(status, "AuthStatus", auth_status);
auth_route!(authenticate, "Authenticate", authenticate);
auth_route!(user_add, "UserAdd", user_add);
auth_route!(user_get, "UserGet", user_get);
auth_route!(user_list, "UserList", user_list);
auth_route!(user_delete, "UserDelete", user_delete);
auth_route!(
    user_change_password,
    "UserChangePassword",
    user_change_password
);
auth_route!(user_grant_role, "UserGrantRole", user_grant_role);
auth_route!(user_revoke_role, "UserRevokeRole", user_revoke_role);
auth_route!(role_add, "RoleAdd", role_add);
auth_route!(role_get, "RoleGet", role_get);
auth_route!(role_list, "RoleList", role_list);
auth_route!(role_delete, "RoleDelete", role_delete);
auth_route!(
    role_grant_permission,
    "RoleGrantPermission",
    role_grant_permission
);
auth_route!(
    role_revoke_permission,
    "RoleRevokePermission",
    role_revoke_permission
);

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/auth/enable", post(enable))
        .route("/auth/disable", post(disable))
        .route("/auth/status", post(status))
        .route("/auth/authenticate", post(authenticate))
        .route("/auth/user/add", post(user_add))
        .route("/auth/user/get", post(user_get))
        .route("/auth/user/list", post(user_list))
        .route("/auth/user/delete", post(user_delete))
        .route("/auth/user/changepw", post(user_change_password))
        .route("/auth/user/grant", post(user_grant_role))
        .route("/auth/user/revoke", post(user_revoke_role))
        .route("/auth/role/add", post(role_add))
        .route("/auth/role/get", post(role_get))
        .route("/auth/role/list", post(role_list))
        .route("/auth/role/delete", post(role_delete))
        .route("/auth/role/grant", post(role_grant_permission))
        .route("/auth/role/revoke", post(role_revoke_permission))
}
